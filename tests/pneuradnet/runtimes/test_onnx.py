"""The onnxruntime runtime: the default model's ONNX conversion served without TensorFlow in the process."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pneuradnet.classifier import Classifier
from pneuradnet.conversion import TOLERANCE, onnx_model_for
from pneuradnet.errors import ModelFileError
from pneuradnet.images import decode_image
from pneuradnet.manifest import load_manifest
from pneuradnet.preprocess import to_model_input
from pneuradnet.runtimes import load_runtime
from pneuradnet.runtimes.onnx import OnnxRuntime

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[3]

SHARED_CACHE = "onnx-cache"
"""Folder under the session's tmp folder where the default model is converted once, for every test module."""

SERVE_ONE_IMAGE = """
import json, sys
from pneuradnet.classifier import Classifier

classifier = Classifier.load("default", runtime="onnxruntime", cache_dir=sys.argv[1], threads=1)
with open(sys.argv[2], "rb") as stream:
    [prediction] = classifier.classify([("image.jpeg", stream.read())])
loaded = sorted({name.partition(".")[0] for name in sys.modules} & {"tensorflow", "keras", "tf2onnx", "tf_keras"})
print(json.dumps({"prediction": prediction.to_dict(), "heavy_modules": loaded}))
"""


@pytest.fixture(scope="session")
def default_onnx(tmp_path_factory, default_classifier, radiographs) -> Path:
    """The default model converted once per session (about 25 s), verified on the real radiographs."""
    manifest = load_manifest("default")
    inputs = np.stack([to_model_input(decode_image(path.read_bytes()), manifest) for path in radiographs])
    cache_dir = tmp_path_factory.getbasetemp() / SHARED_CACHE
    return onnx_model_for(default_classifier.model_file, cache_dir=cache_dir, check_inputs=inputs)


def test_runtime_describes_the_model_and_runs_batches(default_onnx):
    runtime = OnnxRuntime(default_onnx, threads=1)
    batch = np.random.default_rng(0).uniform(-1, 1, (3, 150, 150, 3))  # float64: the runtime casts it

    outputs = runtime.run(batch)

    assert runtime.name == "onnxruntime"
    assert runtime.input_shape == (150, 150, 3)
    assert runtime.output_size == 2
    assert outputs.shape == (3, 2)
    assert np.allclose(runtime.run(batch[1:2]), outputs[1:2], atol=TOLERANCE)


def test_a_file_onnxruntime_cannot_load_is_a_model_file_error(tmp_path):
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x00not a model")

    with pytest.raises(ModelFileError, match="onnxruntime cannot load"):
        OnnxRuntime(garbage)
    with pytest.raises(ModelFileError, match="onnxruntime cannot load"):
        OnnxRuntime(tmp_path / "missing.onnx")


def test_load_runtime_serves_an_onnx_file_as_it_is(default_onnx, tmp_path):
    runtime = load_runtime("onnxruntime", default_onnx)

    assert isinstance(runtime, OnnxRuntime)
    assert list(tmp_path.iterdir()) == []


def test_load_runtime_needs_a_cache_dir_for_a_keras_file(default_classifier):
    with pytest.raises(ValueError, match="needs cache_dir"):
        load_runtime("onnxruntime", default_classifier.model_file)


def test_load_runtime_names_the_runtimes_it_knows():
    with pytest.raises(ValueError, match="available: tensorflow, onnxruntime"):
        load_runtime("tflite", Path("model.tflite"))


def test_classifier_on_onnxruntime_agrees_with_tensorflow(default_onnx, default_classifier, radiographs):
    onnx_classifier = Classifier.load("default", runtime="onnxruntime", cache_dir=default_onnx.parent)
    items = [(path.name, path.read_bytes()) for path in radiographs]

    served, reference = onnx_classifier.classify(items), default_classifier.classify(items)

    assert {prediction.runtime for prediction in served} == {"onnxruntime"}
    assert {prediction.runtime for prediction in reference} == {"tensorflow"}
    for onnx_prediction, tf_prediction in zip(served, reference, strict=True):
        assert onnx_prediction.predicted_class == tf_prediction.predicted_class
        assert np.allclose(onnx_prediction.predictions, tf_prediction.predictions, rtol=0, atol=TOLERANCE)


def test_a_serving_process_never_imports_tensorflow(default_onnx, radiographs):
    image = radiographs[0]
    in_process = Classifier.load("default", runtime="onnxruntime", cache_dir=default_onnx.parent)
    [expected] = in_process.classify([("image.jpeg", image.read_bytes())])

    completed = subprocess.run([sys.executable, "-c", SERVE_ONE_IMAGE, str(default_onnx.parent), str(image)],
                               cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)

    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["heavy_modules"] == []
    assert report["prediction"]["runtime"] == "onnxruntime"
    assert report["prediction"]["predicted_class"] == expected.predicted_class
    assert np.allclose(report["prediction"]["predictions"], expected.predictions, rtol=0, atol=TOLERANCE)
