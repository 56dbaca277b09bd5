"""A model bundle: a manifest bound to a loaded model, classifying images in batches."""

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pneuradnet.errors import InvalidImageError, ModelManifestError
from pneuradnet.images import RADIOGRAPH_SHAPE, SOURCE_INFO, ShapeLimits, decode_image, source_size
from pneuradnet.manifest import ModelManifest, Resize, load_manifest, resolve_model_file
from pneuradnet.preprocess import to_model_input
from pneuradnet.results import Prediction
from pneuradnet.runtimes import Runtime, load_runtime

DEFAULT_MAX_BATCH = 16
"""Images per forward pass; 16 measured fastest on 2 cores with the default model."""


@dataclass(frozen=True)
class PreparedImage:
    filename: str
    pixels: np.ndarray
    decode_ms: float
    source: dict[str, str | int | None] | None = None
    """Non-identifying facts about the file decode_image found (DICOM's); None for PNG and JPEG."""
    decoded: Image.Image | None = None
    """The decoded image itself, when the caller asked to keep it (to draw over it)."""


class Classifier:
    def __init__(self, manifest: ModelManifest, runtime: Runtime, *, model_file: Path,
                 max_batch: int = DEFAULT_MAX_BATCH, decode_threads: int = 1,
                 shape_limits: ShapeLimits = RADIOGRAPH_SHAPE) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if decode_threads < 1:
            raise ValueError(f"decode_threads must be at least 1, got {decode_threads}")
        _check_fits(manifest, runtime)
        self.manifest = manifest
        self.runtime = runtime
        self.model_file = model_file
        self.max_batch = max_batch
        self.shape_limits = shape_limits
        # A batch is decoded on several cores while none is busy with inference (Pillow and NumPy release the
        # GIL). Even with one decoding thread the calling thread only waits: an exception raised in it by a signal
        # (a time limit) then stops the whole batch, and is never mistaken for one image's failure.
        self._decoders = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode")

    @classmethod
    def load(
        cls,
        manifest: str | Path | ModelManifest = "default",
        *,
        model_path: str | Path | None = None,
        input_size: tuple[int, int] | None = None,
        runtime: str = "tensorflow",
        threads: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        cache_dir: str | Path | None = None,
        shape_limits: ShapeLimits = RADIOGRAPH_SHAPE,
    ) -> "Classifier":
        """Load a model by manifest name or path; `input_size` (height, width) overrides the manifest's.

        `cache_dir` keeps the model's ONNX conversion, which the onnxruntime runtime needs (see load_runtime).
        A batch's images are decoded on as many threads as inference runs on (`threads`, default every core).
        """
        if not isinstance(manifest, ModelManifest):
            manifest = load_manifest(manifest)
        if input_size is not None:
            manifest = manifest.with_input_size(*input_size)
        model_file = resolve_model_file(manifest, model_path)
        return cls(manifest, load_runtime(runtime, model_file, threads=threads, cache_dir=cache_dir,
                                              logits=manifest.output == "logits"),
                   model_file=model_file, max_batch=max_batch, decode_threads=threads or os.cpu_count() or 1,
                   shape_limits=shape_limits)

    def warm_up(self) -> None:
        """Forward passes on blank images, so that the first real batch does not pay for graph set-up.

        Three batch sizes: TensorFlow traces a function per input shape until the second distinct one,
        then traces one that takes any batch size (about 0.5 s each, measured).
        """
        spec = self.manifest.input
        for size in sorted({1, 2, self.max_batch}):
            self.probabilities(np.zeros((size, spec.height, spec.width, spec.channels), dtype=np.float32))

    def prepare(self, filename: str, data: bytes, *, keep_decoded: bool = False) -> PreparedImage:
        """Decode and preprocess one image; raises InvalidImageError for anything that is not one."""
        started = time.perf_counter()
        # The default model resizes with NEAREST: a DICOM is then displayed at the sample points alone.
        sample_to = (self.manifest.input.width, self.manifest.input.height) \
            if self.manifest.resize is Resize.NEAREST and not keep_decoded else None
        image = decode_image(data, sample_to=sample_to)
        self.shape_limits.check(*source_size(image))
        pixels = to_model_input(image, self.manifest)
        return PreparedImage(filename, pixels, _ms_since(started), source=image.info.get(SOURCE_INFO),
                             decoded=image if keep_decoded else None)

    def prepare_each(self, items: Sequence[tuple[str, bytes | Callable[[], bytes]]], *,
                     keep_decoded: Sequence[bool] = ()) -> list[PreparedImage | Exception]:
        """prepare() of every (filename, bytes) pair, in order, on the decoding threads; an image that fails gives
        its exception in its place (InvalidImageError for anything that is not an image). The bytes may be given
        as a callable that returns them once they have arrived (a download under way): each image is decoded as
        soon as it is there, while the others are still coming, and what the callable raises is that image's
        outcome. `keep_decoded` says, per item, whether to keep its decoded image."""
        keep = list(keep_decoded) or [False] * len(items)
        if len(keep) != len(items):
            raise ValueError(f"keep_decoded has {len(keep)} flags for {len(items)} items")

        def prepare(item: tuple[tuple[str, bytes | Callable[[], bytes]], bool]) -> PreparedImage | Exception:
            (filename, data), keep_image = item
            try:
                return self.prepare(filename, data() if callable(data) else data, keep_decoded=keep_image)
            except Exception as error:  # handed back in its image's place: one bad file never stops the rest
                return error

        return list(self._decoders.map(prepare, zip(items, keep, strict=True)))

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (len(inputs), len(labels)), computed max_batch images at a time."""
        outputs = [self.runtime.run(inputs[start:start + self.max_batch])
                   for start in range(0, len(inputs), self.max_batch)]
        raw = np.concatenate(outputs) if outputs else np.empty((0, len(self.manifest.labels)))
        if len(raw) != len(inputs):
            raise RuntimeError(f"the model returned {len(raw)} outputs for {len(inputs)} inputs")
        return softmax(raw) if self.manifest.output == "logits" else raw.astype(np.float64)

    def predict(self, images: Sequence[PreparedImage]) -> list[Prediction]:
        """One forward pass per max_batch images; the inference time is shared out evenly."""
        if not images:
            return []
        started = time.perf_counter()
        probabilities = self.probabilities(np.stack([image.pixels for image in images]))
        inference_ms = _ms_since(started) / len(images)
        return [self._record(image, row, inference_ms) for image, row in zip(images, probabilities, strict=True)]

    def classify(self, items: Iterable[tuple[str, bytes]]) -> list[Prediction | InvalidImageError]:
        """Classify (filename, bytes) pairs in order; a bad image gives its error in its place."""
        outcomes: list[PreparedImage | InvalidImageError] = []
        for outcome in self.prepare_each(list(items)):
            if not isinstance(outcome, PreparedImage | InvalidImageError):
                raise outcome  # not the image's fault: the caller should hear of it as before
            outcomes.append(outcome)
        predictions = iter(self.predict([o for o in outcomes if isinstance(o, PreparedImage)]))
        return [next(predictions) if isinstance(o, PreparedImage) else o for o in outcomes]

    def _record(self, image: PreparedImage, probabilities: np.ndarray, inference_ms: float) -> Prediction:
        return Prediction(
            filename=image.filename,
            labels=self.manifest.labels,
            predictions=tuple(float(p) for p in probabilities),
            model_name=self.manifest.name,
            model_version=self.manifest.version,
            runtime=self.runtime.name,
            timings_ms={"decode": round(image.decode_ms, 3), "inference": round(inference_ms, 3)},
            source=image.source,
        )


def _check_fits(manifest: ModelManifest, runtime: Runtime) -> None:
    if runtime.output_size != len(manifest.labels):
        raise ModelManifestError(
            f"model has {runtime.output_size} outputs but manifest {manifest.name!r} names "
            f"{len(manifest.labels)} labels {list(manifest.labels)}"
        )
    height, width, channels = runtime.input_shape
    spec = manifest.input
    if channels != spec.channels:
        raise ModelManifestError(f"model takes {channels} channels, manifest {manifest.name!r} says {spec.channels}")
    if any(fixed not in (None, wanted) for fixed, wanted in ((height, spec.height), (width, spec.width))):
        raise ModelManifestError(
            f"model input is fixed at {height}x{width} (height x width); it cannot take "
            f"{spec.height}x{spec.width} as manifest {manifest.name!r} or an override asks"
        )


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    probabilities: np.ndarray = exponentials / exponentials.sum(axis=1, keepdims=True)
    return probabilities


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
