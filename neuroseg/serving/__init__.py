"""Serving models outside TensorFlow: ONNX export and runtime (:mod:`neuroseg.serving.onnx`)
and bioimage.io model packages (:mod:`neuroseg.serving.bioimageio`).

Importing this package is light: nothing here imports TensorFlow, Keras or ONNX Runtime until a
function needs it.
"""
