"""Loading a Keras model file: one function for the TensorFlow runtime, the ONNX conversion and Grad-CAM."""

import subprocess
import sys

import numpy as np
import pytest

from pneuradnet.errors import ModelFileError
from pneuradnet.keras_model import load_keras_model


def test_importing_the_loader_imports_neither_keras_nor_tensorflow():
    probe = ("import sys, pneuradnet.keras_model, pneuradnet.explain, pneuradnet.conversion, "
             "pneuradnet.runtimes.tensorflow; print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout

    assert output.strip() == "[]"


def test_a_saved_model_loads_with_its_shapes_and_runs(keras_model_file):
    model = load_keras_model(keras_model_file(input_shape=(24, 16, 3), outputs=3))

    assert model.input_shape == (None, 24, 16, 3)
    assert np.asarray(model.predict_on_batch(np.zeros((2, 24, 16, 3), np.float32))).shape == (2, 3)


@pytest.mark.parametrize("content", [b"these are not weights", None], ids=["unreadable", "missing"])
def test_a_file_that_is_not_a_keras_model_is_a_model_file_error_naming_it(tmp_path, content):
    pytest.importorskip("keras")
    model_file = tmp_path / "m.keras"
    if content is not None:
        model_file.write_bytes(content)

    with pytest.raises(ModelFileError, match=f"cannot load Keras model {model_file}"):
        load_keras_model(model_file)
