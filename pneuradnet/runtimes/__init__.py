"""Inference runtimes: each runs a model file on a batch of preprocessed arrays and returns raw outputs."""

from pathlib import Path
from typing import Protocol

import numpy as np


class Runtime(Protocol):
    name: str
    input_shape: tuple[int | None, int | None, int]
    """(height, width, channels) the model accepts; None where any size goes."""
    output_size: int

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw model outputs, shape (len(batch), output_size)."""


RUNTIMES = ("tensorflow", "onnxruntime")
"""Runtime names load_runtime knows: TensorFlow is the reference, onnxruntime the faster one for workers."""


def load_runtime(name: str, model_file: str | Path, *, threads: int | None = None,
                 cache_dir: str | Path | None = None, logits: bool = False) -> Runtime:
    """Load a model file into the named runtime; `threads` caps the threads one forward pass uses.

    onnxruntime serves an .onnx file as it is; a Keras file it serves through its ONNX conversion, kept in
    `cache_dir` and made (importing TensorFlow, tens of seconds) if the cache has none, verified on probabilities
    (after a softmax if the model's outputs are `logits`): see pneuradnet.conversion.
    """
    if name == "tensorflow":
        from pneuradnet.runtimes.tensorflow import TensorFlowRuntime

        return TensorFlowRuntime(Path(model_file), threads=threads)
    if name == "onnxruntime":
        if Path(model_file).suffix == ".onnx":
            from pneuradnet.runtimes.onnx import OnnxRuntime

            return OnnxRuntime(Path(model_file), threads=threads)
        if cache_dir is None:
            raise ValueError(f"the onnxruntime runtime needs cache_dir, the folder that keeps {model_file} "
                             "converted to ONNX")
        from pneuradnet.conversion import onnx_runtime_for

        return onnx_runtime_for(model_file, cache_dir=cache_dir, threads=threads, logits=logits)
    raise ValueError(f"unknown inference runtime {name!r}; available: {', '.join(RUNTIMES)}")
