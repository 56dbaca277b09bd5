"""Converting Keras models to ONNX: verified against TensorFlow, cached on disk, rebuilt when the cache is corrupt."""

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pneuradnet import conversion
from pneuradnet.classifier import Classifier
from pneuradnet.conversion import TOLERANCE, onnx_model_for, sidecar_for, verify_conversion
from pneuradnet.errors import ConversionError, ModelFileError
from pneuradnet.images import decode_image
from pneuradnet.manifest import load_manifest, sha256_of
from pneuradnet.preprocess import to_model_input
from pneuradnet.runtimes import load_runtime
from pneuradnet.runtimes.onnx import OnnxRuntime

pytestmark = [
    pytest.mark.model,
    # tf2onnx reads Keras 3 variables through np.array(..., copy=False), which NumPy 2 warns about; harmless here.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]

SHARED_CACHE = "onnx-cache"
"""Folder under the session's tmp folder where the default model is converted once, for every test module."""


@pytest.fixture(scope="session")
def radiograph_inputs(radiographs) -> np.ndarray:
    """The 16 real radiographs, preprocessed for the default model."""
    manifest = load_manifest("default")
    return np.stack([to_model_input(decode_image(path.read_bytes()), manifest) for path in radiographs])


@pytest.fixture(scope="session")
def default_onnx(tmp_path_factory, default_classifier, radiograph_inputs) -> Path:
    """The default model converted once per session (about 25 s), verified on the real radiographs."""
    cache_dir = tmp_path_factory.getbasetemp() / SHARED_CACHE
    return onnx_model_for(default_classifier.model_file, cache_dir=cache_dir, check_inputs=radiograph_inputs)


def _keras_file(keras_model_file) -> Path:
    """A tiny model (32x32x3 -> 2 logits) that converts in a second or two."""
    return keras_model_file(name="tiny.keras")


def _onnx_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if not path.name.endswith(".lock"))


def test_default_model_agrees_with_tensorflow_on_the_real_radiographs(default_onnx, default_classifier,
                                                                      radiograph_inputs):
    onnx_classifier = Classifier(default_classifier.manifest, OnnxRuntime(default_onnx),
                                 model_file=default_classifier.model_file)

    expected = default_classifier.probabilities(radiograph_inputs)
    got = onnx_classifier.probabilities(radiograph_inputs)

    assert got.shape == expected.shape == (16, 2)
    assert np.max(np.abs(got - expected)) <= TOLERANCE
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_cache_entry_is_named_by_source_checksum_converter_and_opset(default_onnx, default_classifier):
    source_sha256 = sha256_of(default_classifier.model_file)
    tf2onnx_version = conversion._installed_version("tf2onnx")

    assert default_onnx.name == f"{source_sha256[:16]}-tf2onnx{tf2onnx_version}-opset17.onnx"
    assert sidecar_for(default_onnx).name == f"{source_sha256[:16]}-tf2onnx{tf2onnx_version}-opset17.json"
    sidecar = json.loads(sidecar_for(default_onnx).read_text())
    assert sidecar["onnx_sha256"] == sha256_of(default_onnx)
    assert sidecar["source_sha256"] == source_sha256
    assert (sidecar["converter"], sidecar["converter_version"], sidecar["opset"]) == ("tf2onnx", tf2onnx_version, 17)
    assert sidecar["verification"]["passed"] is True
    assert sidecar["verification"]["inputs"] == 16
    assert sidecar["verification"]["input_kind"] == "caller"
    assert sidecar["verification"]["max_abs_diff"] <= TOLERANCE


def test_a_valid_entry_is_used_without_converting(default_onnx, default_classifier, monkeypatch, caplog):
    monkeypatch.setattr(conversion, "_convert_into", _must_not_convert)

    with caplog.at_level(logging.WARNING, logger="pneuradnet.conversion"):
        found = onnx_model_for(default_classifier.model_file, cache_dir=default_onnx.parent)

    assert found == default_onnx
    assert caplog.records == []


def test_a_missing_entry_is_converted_with_a_warning(keras_model_file, tmp_path, caplog):
    model_file = _keras_file(keras_model_file)

    with caplog.at_level(logging.WARNING, logger="pneuradnet.conversion"):
        onnx_file = onnx_model_for(model_file, cache_dir=tmp_path / "cache")

    assert [record.levelname for record in caplog.records] == ["WARNING"]
    assert "the cache has no entry for it" in caplog.text
    assert _onnx_files(tmp_path / "cache") == sorted([onnx_file.name, sidecar_for(onnx_file).name])
    verification = json.loads(sidecar_for(onnx_file).read_text())["verification"]
    assert verification["input_kind"] == "synthetic"
    assert verification["inputs"] == conversion.SYNTHETIC_CHECK_INPUTS


def test_a_missing_entry_is_an_error_when_not_converting(keras_model_file, tmp_path):
    model_file = _keras_file(keras_model_file)

    with pytest.raises(ModelFileError, match="no usable ONNX conversion"):
        onnx_model_for(model_file, cache_dir=tmp_path / "cache", convert_if_missing=False)
    assert not (tmp_path / "cache").exists()


def _flip_a_byte(onnx_file: Path) -> None:
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))


def _truncate(onnx_file: Path) -> None:
    onnx_file.write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 2])


def _drop_sidecar(onnx_file: Path) -> None:
    sidecar_for(onnx_file).unlink()


@pytest.mark.parametrize(("corrupt", "problem"), [
    (_flip_a_byte, "corrupt"),
    (_truncate, "corrupt"),
    (_drop_sidecar, "no sidecar"),
])
def test_a_corrupt_entry_is_detected_and_rebuilt(keras_model_file, tmp_path, caplog, corrupt, problem):
    model_file = _keras_file(keras_model_file)
    cache_dir = tmp_path / "cache"
    onnx_file = onnx_model_for(model_file, cache_dir=cache_dir)
    corrupt(onnx_file)

    with caplog.at_level(logging.WARNING, logger="pneuradnet.conversion"):
        rebuilt = onnx_model_for(model_file, cache_dir=cache_dir)

    assert rebuilt == onnx_file
    assert problem in caplog.text
    assert json.loads(sidecar_for(rebuilt).read_text())["onnx_sha256"] == sha256_of(rebuilt)
    assert OnnxRuntime(rebuilt).output_size == 2


def test_an_entry_that_passes_its_checksum_but_does_not_load_is_rebuilt(keras_model_file, tmp_path, caplog):
    model_file = _keras_file(keras_model_file)
    cache_dir = tmp_path / "cache"
    onnx_file = onnx_model_for(model_file, cache_dir=cache_dir)
    onnx_file.write_bytes(b"not an onnx model")
    sidecar = json.loads(sidecar_for(onnx_file).read_text())
    sidecar_for(onnx_file).write_text(json.dumps({**sidecar, "onnx_sha256": sha256_of(onnx_file)}))

    with caplog.at_level(logging.WARNING, logger="pneuradnet.conversion"):
        runtime = load_runtime("onnxruntime", model_file, cache_dir=cache_dir)

    assert "does not load" in caplog.text
    assert runtime.output_size == 2
    assert json.loads(sidecar_for(onnx_file).read_text())["onnx_sha256"] == sha256_of(onnx_file)


def test_verification_refuses_outputs_that_differ_from_the_reference(keras_model_file, tmp_path):
    onnx_file = onnx_model_for(_keras_file(keras_model_file), cache_dir=tmp_path / "cache")
    inputs = np.random.default_rng(1).uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
    reference = OnnxRuntime(onnx_file).run(inputs).astype(np.float64)

    assert verify_conversion(onnx_file, inputs, reference) == 0.0
    with pytest.raises(ConversionError, match=r"differ from TensorFlow's by up to 0\.001"):
        verify_conversion(onnx_file, inputs, reference + 1e-3)
    with pytest.raises(ConversionError, match="shape"):
        verify_conversion(onnx_file, inputs, reference[:2])


def test_a_conversion_that_disagrees_with_tensorflow_is_refused_and_not_cached(keras_model_file, tmp_path,
                                                                               monkeypatch):
    keras_outputs = conversion._keras_outputs
    monkeypatch.setattr(conversion, "_keras_outputs", lambda model, inputs: keras_outputs(model, inputs) + 1e-4)
    cache_dir = tmp_path / "cache"

    with pytest.raises(ConversionError, match="refusing it"):
        onnx_model_for(_keras_file(keras_model_file), cache_dir=cache_dir)
    assert _onnx_files(cache_dir) == []  # no entry, and no temporary file left behind


def test_check_inputs_must_fit_the_model(keras_model_file, tmp_path):
    with pytest.raises(ValueError, match=r"shaped \(n, 32, 32, 3\)"):
        onnx_model_for(_keras_file(keras_model_file), cache_dir=tmp_path / "cache",
                       check_inputs=np.zeros((2, 16, 16, 3), dtype=np.float32))


def test_concurrent_callers_convert_once(keras_model_file, tmp_path, monkeypatch):
    model_file = _keras_file(keras_model_file)
    convert_into = conversion._convert_into
    conversions = []

    def counting(*args, **kwargs):
        conversions.append(args)
        time.sleep(0.5)  # holds the lock long enough for the other caller to find the entry missing too
        convert_into(*args, **kwargs)

    monkeypatch.setattr(conversion, "_convert_into", counting)
    found: list[Path] = []
    callers = [threading.Thread(target=lambda: found.append(onnx_model_for(model_file, cache_dir=tmp_path / "c")))
               for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()

    assert len(found) == 2 and found[0] == found[1]
    assert len(conversions) == 1


def test_without_tf2onnx_an_entry_of_any_converter_version_is_served(keras_model_file, tmp_path, monkeypatch):
    model_file = _keras_file(keras_model_file)
    onnx_file = onnx_model_for(model_file, cache_dir=tmp_path / "cache")
    installed = conversion._installed_version
    monkeypatch.setattr(conversion, "_installed_version", lambda name: None if name == "tf2onnx" else installed(name))

    assert onnx_model_for(model_file, cache_dir=tmp_path / "cache") == onnx_file
    with pytest.raises(ConversionError, match="tf2onnx is not installed"):
        onnx_model_for(model_file, cache_dir=tmp_path / "empty")
    with pytest.raises(ModelFileError, match="no usable ONNX conversion"):
        onnx_model_for(model_file, cache_dir=tmp_path / "empty", convert_if_missing=False)


def test_the_pneuradnet_vgg16_architecture_converts_and_agrees(tmp_path):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(7)
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(720, 500, 3))
    head = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(base.output))
    model = keras.Model(base.input, keras.layers.Dense(3, activation="softmax")(head))
    model_file = tmp_path / "finalModel.keras"
    model.save(model_file)
    inputs = np.random.default_rng(7).uniform(0, 1, (2, 720, 500, 3)).astype(np.float32)
    expected = np.asarray(model.predict_on_batch(inputs), dtype=np.float64)
    del model, base

    onnx_model_for(model_file, cache_dir=tmp_path / "cache", check_inputs=inputs)
    classifier = Classifier.load("pneuradnet-vgg16", model_path=model_file, runtime="onnxruntime",
                                 cache_dir=tmp_path / "cache")

    assert classifier.runtime.input_shape == (720, 500, 3)
    assert np.max(np.abs(classifier.probabilities(inputs) - expected)) <= TOLERANCE


def _must_not_convert(*args, **kwargs):
    raise AssertionError("a valid cache entry was converted again")
