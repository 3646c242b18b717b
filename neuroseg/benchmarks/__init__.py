"""Benchmarks behind ``neuroseg bench``: each module has one function returning a JSON-able dict.

- :mod:`neuroseg.benchmarks.masks`: vectorised mask analysis against the seed's flood fill.

Importing this package is light: no TensorFlow, no Prefect; each benchmark imports what it needs.
"""
