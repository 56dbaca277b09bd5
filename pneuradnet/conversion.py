"""Converting a Keras model file to ONNX once, verified against TensorFlow, and keeping the result in a cache folder.

A cache entry is two files named by the cache key `<source sha256[:16]>-tf2onnx<version>-opset<opset>`:
`<key>.onnx`, the converted model, and `<key>.json`, its sidecar (the .onnx file's sha256, the source's, the
converter and how the conversion was verified). Each file is written under a temporary name and renamed into place,
the .onnx first, so no reader ever sees half a file. A reader checks the .onnx against its sidecar's checksum; an
entry that fails the check is corrupt, and is converted again.

Concurrency: one process converts a given entry at a time, holding an flock on `<key>.lock` (the kernel releases it
if the process dies mid-conversion). Readers take no lock; one that finds no valid entry takes the lock, then looks
again before converting, since the process that held it has usually just written the entry.

Converting imports TensorFlow (it runs the Keras model as the reference); finding and checking a cached entry imports
neither TensorFlow nor tf2onnx, so a serving process keeps them out of its memory.
"""

import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal

import numpy as np

from pneuradnet.classifier import softmax
from pneuradnet.errors import ConversionError, ModelFileError
from pneuradnet.keras_model import load_keras_model
from pneuradnet.manifest import sha256_of
from pneuradnet.runtimes.onnx import OnnxRuntime

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

CONVERTER = "tf2onnx"
"""The converter's distribution name; its version is part of the cache key."""

OPSET = 17
"""ONNX opset the models are converted to: tf2onnx 1.17 writes it and every onnxruntime since 1.14 runs it."""

TOLERANCE = 1e-5
"""Largest absolute difference allowed between the converted model's probabilities and TensorFlow's (a model whose
outputs are logits is compared after a softmax; other outputs as they are)."""

SYNTHETIC_CHECK_INPUTS = 4
"""How many inputs to verify a conversion on when the caller gives none: seeded uniform noise over [-1, 1]."""

SYNTHETIC_SEED = 0
"""Seed of those synthetic inputs, so that a conversion is verified on the same inputs every time."""

CHECK_BATCH = 16
"""Inputs per forward pass while verifying, which bounds the memory a large set of check inputs takes."""

SIDECAR_FORMAT = 1
"""Version of the sidecar's JSON layout."""


@dataclass(frozen=True)
class Verification:
    """How a converted model was checked against TensorFlow before it was cached."""

    inputs: int
    input_kind: Literal["caller", "synthetic"]  # the caller's inputs (real radiographs), or seeded noise
    max_abs_diff: float
    tolerance: float


def cache_key(source_sha256: str, converter_version: str, opset: int = OPSET) -> str:
    return f"{source_sha256[:16]}-{CONVERTER}{converter_version}-opset{opset}"


def sidecar_for(onnx_file: Path) -> Path:
    return onnx_file.with_suffix(".json")


def onnx_model_for(
    model_file: str | Path,
    *,
    cache_dir: str | Path,
    check_inputs: np.ndarray | Sequence[np.ndarray] | None = None,
    convert_if_missing: bool = True,
    opset: int = OPSET,
    logits: bool = False,
) -> Path:
    """The cached ONNX conversion of a Keras model file, converted and verified first if the cache has none.

    `check_inputs` (n, height, width, channels) are what a conversion is verified on: pass real preprocessed
    images; without them it is verified on seeded noise. Raises ConversionError if the conversion fails or
    disagrees with TensorFlow, ModelFileError if there is no valid entry and `convert_if_missing` is false.
    Without tf2onnx installed (a serving-only install) the newest valid entry of any tf2onnx version is used.
    """
    model_file, cache_dir = Path(model_file), Path(cache_dir)
    if not model_file.is_file():
        raise ModelFileError(f"model file {model_file} does not exist")
    source_sha256 = sha256_of(model_file)
    converter_version = _installed_version(CONVERTER)
    if converter_version is None:
        return _cached_by_any_converter(model_file, cache_dir, source_sha256, opset, convert_if_missing)

    key = cache_key(source_sha256, converter_version, opset)
    onnx_file = cache_dir / f"{key}.onnx"
    problem = _problem_with(onnx_file, source_sha256)
    if problem is None:
        return onnx_file
    if not convert_if_missing:
        raise ModelFileError(f"no usable ONNX conversion of {model_file} in {cache_dir}: {problem}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(_lock_for(onnx_file)):
        problem = _problem_with(onnx_file, source_sha256)
        if problem is None:  # another process converted it while we waited for the lock
            return onnx_file
        logger.warning("converting %s to ONNX as %s, because %s; this takes tens of seconds and imports TensorFlow",
                       model_file, onnx_file, problem)
        _convert_into(onnx_file, model_file, source_sha256=source_sha256, converter_version=converter_version,
                      opset=opset, check_inputs=check_inputs, logits=logits)
    return onnx_file


def onnx_runtime_for(model_file: str | Path, *, cache_dir: str | Path, threads: int | None = None,
                     logits: bool = False) -> OnnxRuntime:
    """An OnnxRuntime on the cached conversion of a Keras model file; an entry that does not load is rebuilt once."""
    onnx_file = onnx_model_for(model_file, cache_dir=cache_dir, logits=logits)
    loaded = _identity(onnx_file)
    try:
        return OnnxRuntime(onnx_file, threads=threads)
    except ModelFileError as error:
        logger.warning("the cached ONNX model %s passes its checksum but does not load (%s); converting it again",
                       onnx_file, error)
        with _exclusive(_lock_for(onnx_file)):
            if _identity(onnx_file) == loaded:  # else another process has rebuilt it already
                onnx_file.unlink(missing_ok=True)
                sidecar_for(onnx_file).unlink(missing_ok=True)
    return OnnxRuntime(onnx_model_for(model_file, cache_dir=cache_dir, logits=logits), threads=threads)


def verify_conversion(onnx_file: Path, inputs: np.ndarray, reference: np.ndarray, *, logits: bool = False,
                      tolerance: float = TOLERANCE) -> float:
    """The largest absolute difference between the ONNX model's outputs on `inputs` and `reference` (TensorFlow's),
    compared as probabilities: after a softmax if they are `logits`.

    Raises ConversionError if the model does not load, or if the difference exceeds `tolerance`.
    """
    try:
        runtime = OnnxRuntime(onnx_file)
    except ModelFileError as error:
        raise ConversionError(f"the converted model does not load in onnxruntime: {error}") from error
    outputs = _in_batches(runtime.run, inputs)
    if outputs.shape != reference.shape:
        raise ConversionError(f"the converted model gives outputs of shape {outputs.shape}, TensorFlow "
                              f"{reference.shape}; refusing it")
    if logits:
        outputs, reference = softmax(outputs), softmax(reference)
    max_abs_diff = float(np.max(np.abs(outputs.astype(np.float64) - reference)))
    if not max_abs_diff <= tolerance:  # written so that a NaN is refused too
        raise ConversionError(
            f"the converted model's probabilities differ from TensorFlow's by up to {max_abs_diff:.3g} on "
            f"{len(inputs)} check inputs, more than the {tolerance:g} allowed; refusing it"
        )
    return max_abs_diff


def _convert_into(onnx_file: Path, model_file: Path, *, source_sha256: str, converter_version: str, opset: int,
                  check_inputs: np.ndarray | Sequence[np.ndarray] | None, logits: bool) -> None:
    tf, tf2onnx = _import_converter()
    model = load_keras_model(model_file)
    if isinstance(model.input_shape, list):
        raise ConversionError(f"{model_file} takes {len(model.input_shape)} inputs; only one-input models convert")
    inputs, input_kind = _check_inputs_for(model.input_shape[1:], check_inputs)
    signature = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="input"),)
    try:
        model_proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    except Exception as error:  # tf2onnx lets TensorFlow's and its op handlers' errors through, of any type
        raise ConversionError(f"tf2onnx cannot convert {model_file}: {error}") from error
    onnx_bytes = model_proto.SerializeToString()
    reference = _keras_outputs(model, inputs)
    with _replacing(onnx_file) as temporary:
        temporary.write_bytes(onnx_bytes)
        max_abs_diff = verify_conversion(temporary, inputs, reference, logits=logits)
    verification = Verification(inputs=len(inputs), input_kind=input_kind, max_abs_diff=max_abs_diff,
                                tolerance=TOLERANCE)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "onnx_file": onnx_file.name,
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "source_file": model_file.name,
        "source_sha256": source_sha256,
        "converter": CONVERTER,
        "converter_version": converter_version,
        "opset": opset,
        "tensorflow_version": tf.__version__,
        "onnxruntime_version": _installed_version("onnxruntime"),
        "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "verification": {"passed": True, **asdict(verification)},
    }
    with _replacing(sidecar_for(onnx_file)) as temporary:
        temporary.write_text(json.dumps(sidecar, indent=2) + "\n")
    logger.info("converted %s to %s; it agrees with TensorFlow to %.3g on %d %s inputs", model_file.name,
                onnx_file.name, max_abs_diff, len(inputs), input_kind)


def _import_converter() -> tuple[ModuleType, ModuleType]:
    """tensorflow and tf2onnx, imported."""
    try:
        import keras  # noqa: F401  (load_keras_model imports it: its absence is reported here, with the others)
        import tensorflow as tf
        import tf2onnx
    except ImportError as error:
        raise ConversionError(
            f"converting a Keras model to ONNX needs tensorflow, tf2onnx and onnx ({error}); "
            "install them with pip install 'pneuradnet[onnx-convert]'"
        ) from error
    return tf, tf2onnx


def _check_inputs_for(shape: tuple[int | None, ...],
                      check_inputs: np.ndarray | Sequence[np.ndarray] | None,
                      ) -> tuple[np.ndarray, Literal["caller", "synthetic"]]:
    if check_inputs is None:
        sizes = [size for size in shape if size is not None]
        if len(sizes) < len(shape):
            raise ConversionError(f"the model takes inputs of any size {shape}: pass check_inputs to verify it on")
        noise = np.random.default_rng(SYNTHETIC_SEED).uniform(-1.0, 1.0, (SYNTHETIC_CHECK_INPUTS, *sizes))
        return noise.astype(np.float32), "synthetic"
    inputs = np.asarray(check_inputs, dtype=np.float32)
    if inputs.ndim != 1 + len(shape) or len(inputs) == 0 or any(
        fixed not in (None, size) for fixed, size in zip(shape, inputs.shape[1:], strict=True)
    ):
        raise ValueError(f"check_inputs must be a non-empty batch shaped (n, {', '.join(map(str, shape))}) "
                         f"for this model, got {inputs.shape}")
    return inputs, "caller"


def _keras_outputs(model: "keras.Model", inputs: np.ndarray) -> np.ndarray:
    """The reference outputs: what TensorFlow computes for `inputs`."""
    return _in_batches(lambda batch: np.asarray(model.predict_on_batch(batch)), inputs)


def _in_batches(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([run(inputs[start:start + CHECK_BATCH]) for start in range(0, len(inputs), CHECK_BATCH)])


def _cached_by_any_converter(model_file: Path, cache_dir: Path, source_sha256: str, opset: int,
                             convert_if_missing: bool) -> Path:
    pattern = f"{source_sha256[:16]}-{CONVERTER}*-opset{opset}.onnx"
    for onnx_file in sorted(cache_dir.glob(pattern), key=_modified, reverse=True):
        if _problem_with(onnx_file, source_sha256) is None:
            return onnx_file
    message = f"no usable ONNX conversion of {model_file} in {cache_dir}"
    if convert_if_missing:
        raise ConversionError(f"{message}, and {CONVERTER} is not installed to make one: "
                              "pip install 'pneuradnet[onnx-convert]', or convert it where it is")
    raise ModelFileError(message)


def _problem_with(onnx_file: Path, source_sha256: str) -> str | None:
    """Why a cache entry cannot be used, or None if it can."""
    try:
        sidecar = json.loads(sidecar_for(onnx_file).read_text())
        onnx_sha256 = sha256_of(onnx_file)
    except FileNotFoundError:
        return "the cache has no entry for it" if not onnx_file.exists() else "the cached entry has no sidecar"
    except (OSError, ValueError) as error:
        return f"the cached entry is unreadable ({error})"
    if not isinstance(sidecar, dict) or sidecar.get("source_sha256") != source_sha256:
        return "the cached entry's sidecar names another source model"
    if not isinstance(sidecar.get("verification"), dict) or sidecar["verification"].get("passed") is not True:
        return "the cached entry's sidecar does not record a passed verification"
    if sidecar.get("onnx_sha256") != onnx_sha256:
        return "the cached entry is corrupt: its sha256 does not match the one in its sidecar"
    return None


def _lock_for(onnx_file: Path) -> Path:
    return onnx_file.with_suffix(".lock")


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock_file`: released on exit, or by the kernel when the process dies."""
    with lock_file.open("a") as stream:
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process to finish converting (%s)", lock_file)
            fcntl.flock(stream, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(stream, fcntl.LOCK_UN)


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` to write, renamed over `path` if the block succeeds, else removed."""
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary = Path(name)
    try:
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600; workers may run as another user than the converter
        yield temporary
        with temporary.open("rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file is at `path` now: a rename over it changes the inode."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_mtime_ns


def _modified(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
