"""kcnn: train image classifiers from scratch and by transfer learning with Keras 3.

The command line (``kcnn``) is a thin layer over this package; every command has a
Python function that does the same work.  Importing ``keras_cnn`` does not import
TensorFlow: the modules that need it import it themselves.
"""

__version__ = "0.1.0"
