"""The TensorFlow/Keras runtime: the reference that every other runtime is checked against."""

from pathlib import Path

import numpy as np

from pneuradnet.keras_model import load_keras_model


class TensorFlowRuntime:
    name = "tensorflow"

    def __init__(self, model_file: Path, *, threads: int | None = None) -> None:
        import tensorflow as tf  # heavy: imported only by processes that run a model

        if threads:
            # Must happen before TensorFlow creates its thread pools, i.e. before the model loads.
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        self._model = load_keras_model(model_file)
        _, height, width, channels = self._model.input_shape
        self.input_shape = (height, width, channels)
        self.output_size = self._model.output_shape[-1]

    def run(self, batch: np.ndarray) -> np.ndarray:
        # predict_on_batch skips model.predict's per-call dataset and callback set-up (3-4x faster at batch 1).
        return np.asarray(self._model.predict_on_batch(batch))
