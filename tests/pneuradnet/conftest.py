"""Fixtures for the library's tests: encoded images, tiny Keras models and manifests written to tmp_path."""

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

TINY_MANIFEST = {
    "name": "tiny",
    "version": "0.0.1",
    "labels": ["cat", "dog"],
    "input": {"height": 32, "width": 32, "channels": 3},
    "resize": "bilinear",
    "scaling": "unit",
    "output": "logits",
    "file": {"path": "m.keras"},
    "license": "test fixture",
}
"""A valid manifest naming `m.keras` beside it; tests override single fields."""


@pytest.fixture
def encode() -> Callable[..., bytes]:
    """encode(image, "PNG", **save_params): the bytes Pillow writes."""

    def encode(image: Image.Image, image_format: str, **params) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, image_format, **params)
        return buffer.getvalue()

    return encode


@pytest.fixture
def radiograph(radiographs) -> Callable[[str], Path]:
    """radiograph("NORMAL2-IM-1430-0001"): that real radiograph's path."""
    by_stem = {path.stem: path for path in radiographs}
    return by_stem.__getitem__


@pytest.fixture
def write_manifest(tmp_path) -> Callable[..., Path]:
    """write_manifest(**fields): a manifest file in tmp_path, TINY_MANIFEST with `fields` replaced."""

    def write(name: str = "tiny", **fields) -> Path:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**TINY_MANIFEST, **fields}))
        return path

    return write


@pytest.fixture
def keras_model_file(tmp_path) -> Callable[..., Path]:
    """keras_model_file(input_shape=(32, 32, 3), outputs=2): a random-weight Keras model saved in tmp_path."""
    keras = pytest.importorskip("keras")

    def build(input_shape=(32, 32, 3), outputs: int = 2, *, name: str = "m.keras") -> Path:
        inputs = keras.Input(shape=input_shape)
        pooled = keras.layers.GlobalAveragePooling2D()(inputs)
        model = keras.Model(inputs, keras.layers.Dense(outputs)(pooled))
        path = tmp_path / name
        model.save(path)
        return path

    return build
