"""PNEURADNET: chest radiograph classification, as a library.

Importing this package is cheap: TensorFlow is imported only when a model is loaded.
"""

__version__ = "0.1.0"
