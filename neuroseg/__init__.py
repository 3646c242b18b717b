"""neuroseg: segment and count neuronal cells in fluorescence-microscopy images.

Importing the package is light: no TensorFlow, no Prefect. Heavy modules (``neuroseg.models``,
``neuroseg.training``, ``neuroseg.predict``) import TensorFlow/Keras when they are imported.
"""

__version__ = "0.1.0"
