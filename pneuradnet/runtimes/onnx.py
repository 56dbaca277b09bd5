"""The ONNX Runtime runtime: serves a model converted from Keras (see pneuradnet.conversion), without TensorFlow.

Nothing here may import tensorflow or keras: a worker that serves ONNX keeps them out of its memory.
"""

from pathlib import Path

import numpy as np

from pneuradnet.errors import ModelFileError

INTER_OP_THREADS = 1
"""Threads running independent graph nodes at once; our models are one chain of nodes, so one."""


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, model_file: Path, *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort  # imported here, like TensorFlow in its runtime: only processes that serve
        except ImportError as error:
            raise ImportError("the onnxruntime runtime needs onnxruntime: pip install 'pneuradnet[onnx]'") from error

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = INTER_OP_THREADS
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise to us
        try:
            self._session = ort.InferenceSession(str(model_file), sess_options=options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's errors (InvalidProtobuf, NoSuchFile, ...) share no base but this
            raise ModelFileError(f"onnxruntime cannot load {model_file}: {error}") from error
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4 or len(outputs[0].shape) != 2:
            raise ModelFileError(
                f"{model_file} is not an image classifier: it should take one (batch, height, width, channels) input "
                f"and give one (batch, classes) output, it takes {[i.shape for i in inputs]} "
                f"and gives {[o.shape for o in outputs]}"
            )
        self._input_name = inputs[0].name
        self._output_name = outputs[0].name
        _, height, width, channels = (_fixed(dim) for dim in inputs[0].shape)
        output_size = _fixed(outputs[0].shape[1])
        if channels is None or output_size is None:
            raise ModelFileError(f"{model_file} must fix its number of channels and of classes")
        self.input_shape = (height, width, channels)
        self.output_size = output_size

    def run(self, batch: np.ndarray) -> np.ndarray:
        feed = {self._input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        outputs: np.ndarray = self._session.run([self._output_name], feed)[0]  # onnxruntime ships no types
        return outputs


def _fixed(dim: int | str | None) -> int | None:
    """A dimension's size, or None where the model takes any (onnxruntime names those, e.g. 'unk__628')."""
    return dim if isinstance(dim, int) else None
