"""Inference runtimes: each runs a model file on a batch of preprocessed arrays and returns raw outputs."""

from pathlib import Path
from typing import Protocol

import numpy as np


class Runtime(Protocol):
    name: str

    @property
    def input_shape(self) -> tuple[int | None, int | None, int]:
        """(height, width, channels) the model accepts; None where any size goes."""

    @property
    def output_size(self) -> int: ...

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw model outputs, shape (len(batch), output_size)."""


def load_runtime(name: str, model_file: Path, *, threads: int | None = None) -> Runtime:
    if name == "tensorflow":
        from pneuradnet.runtimes.tensorflow import TensorFlowRuntime

        return TensorFlowRuntime(model_file, threads=threads)
    raise ValueError(f"unknown inference runtime {name!r}; available: tensorflow")
