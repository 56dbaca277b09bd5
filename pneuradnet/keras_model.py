"""Loading a Keras model file, for the three users of the Keras model itself: the TensorFlow runtime, the ONNX
conversion (its reference) and Grad-CAM (its gradients).

Importing this module is cheap: Keras, and TensorFlow under it, are imported when a model is loaded, so a process
that never loads a Keras model never has them in its memory.
"""

from pathlib import Path
from typing import TYPE_CHECKING

from pneuradnet.errors import ModelFileError

if TYPE_CHECKING:
    import keras


def load_keras_model(model_file: str | Path) -> "keras.Model":
    """The Keras model saved in `model_file`, uncompiled (it only runs forward and gives gradients, never trains).

    Raises ModelFileError if the file is missing or is not a Keras model; ImportError if Keras is not installed.
    """
    import keras  # heavy: imports TensorFlow

    try:
        return keras.saving.load_model(model_file, compile=False)
    except (OSError, ValueError) as error:
        raise ModelFileError(f"cannot load Keras model {model_file}: {error}") from error
