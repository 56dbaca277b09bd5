"""The `pneuradnet` command: classify image files, score a labelled folder, describe the active model, or
classify image files with a running service (`submit`).

Exit status: 0 when every image was classified, 1 when some image failed (or `info`'s self-check did),
2 for a usage, library or service error (bad manifest, missing model file, service unreachable, ...),
reported on one line of stderr.
"""

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image
from tqdm import tqdm

from pneuradnet import __version__
from pneuradnet.classifier import DEFAULT_MAX_BATCH, Classifier
from pneuradnet.client import FINISHED, Client, ServiceError
from pneuradnet.errors import PneuradnetError
from pneuradnet.evaluation import Evaluation, evaluate
from pneuradnet.images import decode_image
from pneuradnet.manifest import MODEL_CACHE_DIR, ModelManifest, load_manifest, resolve_model_file, sha256_of
from pneuradnet.preprocess import to_model_input
from pneuradnet.results import Prediction
from pneuradnet.runtimes import RUNTIMES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
"""File name endings (in any case) picked up when a folder is searched; files named explicitly are always tried."""

TF_CPP_MIN_LOG_LEVEL = "2"
"""Hides TensorFlow's C++ INFO and WARNING start-up lines, unless the user set the variable themselves."""

SELF_CHECK_SIZE = (512, 512)
"""Width and height of the uniform gray image that `info` classifies."""

SELF_CHECK_GRAY = 128
"""Its pixel value."""

SELF_CHECK_TOLERANCE = 1e-5
"""How far from 1 the self-check's probabilities may sum."""

API_KEY_ENV = "PNEURADNET_API_KEY"
"""Environment variable `submit` takes the API key from when --key is not given."""

DEFAULT_CHUNK_FILES = 100
"""Images per request of `submit`; the service takes up to MAX_FILES_PER_REQUEST (1000 by default)."""

DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024
"""Bytes of images per request of `submit` (a larger image goes alone); the service takes MAX_UPLOAD_BYTES (256 MiB)."""

ZIP_MAGIC = b"PK\x03\x04"
"""How a ZIP archive starts: the service makes a job of each member, so `submit` sends one in a request of its own."""

STATE_SUFFIX = ".state.json"
"""`submit --out FILE` keeps the batches of the requests already accepted in FILE + this, to resume without
uploading twice."""

IDEMPOTENCY_PREFIX = "pneuradnet-submit-v1-"
"""Start of the Idempotency-Key of a `submit` request; the rest is a SHA-256 of its file names and contents."""


class Exit(IntEnum):
    OK = 0  # every image classified (and, for `info`, the self-check passed)
    SOME_FAILED = 1  # some image could not be classified, or the self-check failed; the others were reported
    ERROR = 2  # nothing was done: a usage error or a library error (manifest, model file), as argparse's own
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class UsageError(Exception):
    """The command line asks for something impossible, e.g. a folder laid out wrongly; reported like a library error."""


@dataclass(frozen=True)
class Failure:
    """An image that could not be classified, in the place of its Prediction."""

    filename: str
    error: str


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before anything imports TensorFlow (it is imported when a model loads).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_CPP_MIN_LOG_LEVEL)
    try:
        return int(args.run(args))
    except (PneuradnetError, UsageError) as error:
        print(f"pneuradnet: error: {_one_line(error)}", file=sys.stderr)
        return int(Exit.ERROR)
    except KeyboardInterrupt:
        return int(Exit.INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (`pneuradnet predict ... | head`): stop quietly, and point stdout at
        # devnull so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(Exit.SOME_FAILED)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--manifest", default="default", metavar="NAME_OR_PATH",
                        help="a shipped manifest's name or a manifest JSON file (default: %(default)s)")
    common.add_argument("--model-path", type=Path, metavar="PATH",
                        help="model file to load instead of the one the manifest names")
    common.add_argument("--batch-size", type=_positive_int, default=DEFAULT_MAX_BATCH, metavar="N",
                        help="images per forward pass, and per chunk read from disk (default: %(default)s)")
    common.add_argument("--runtime", choices=RUNTIMES, default="tensorflow",
                        help="inference runtime: tensorflow, the reference, or onnxruntime, which serves the "
                             "model's verified ONNX conversion (default: %(default)s)")
    common.add_argument("--cache-dir", type=Path, default=MODEL_CACHE_DIR, metavar="DIR",
                        help="where converted models are kept (default: %(default)s)")

    parser = argparse.ArgumentParser(
        prog="pneuradnet",
        description="Chest radiograph pneumonia classifier. Decision support, not a diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict", parents=[common], help="classify image files",
        description="Classify PNG/JPEG/DICOM files; folders are searched recursively. One JSON line per image, "
                    "or CSV with --csv. Exit status 1 if any image could not be classified.",
    )
    predict.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image file or folder")
    predict.add_argument("--csv", action="store_true", help="write CSV instead of JSON lines")
    predict.set_defaults(run=_predict)

    score = commands.add_parser(
        "evaluate", parents=[common], help="score the model on a folder of labelled images",
        description="Score the model on DIR, whose subfolders are named after the model's labels "
                    "(in any case) and hold that label's images.",
    )
    score.add_argument("folder", type=Path, metavar="DIR")
    score.add_argument("--json", action="store_true", help="write the scores as JSON")
    score.set_defaults(run=_evaluate)

    info = commands.add_parser(
        "info", parents=[common], help="describe the active model and check that it runs",
        description="Show the manifest, the model file and its SHA-256, and classify a synthetic gray image.",
    )
    info.add_argument("--json", action="store_true", help="write the description as JSON")
    info.set_defaults(run=_info)

    convert = commands.add_parser(
        "convert", parents=[common], help="convert the model to ONNX once, verified against TensorFlow",
        description="Convert the model file to ONNX into --cache-dir (if not there already), and check that the "
                    "converted model's outputs equal TensorFlow's within 1e-5 on the images given with --check "
                    "(noise inputs without them). Workers serving with onnxruntime then start without converting.",
    )
    convert.add_argument("--check", nargs="+", type=Path, default=[], metavar="PATH",
                         help="images or folders to verify the conversion on (real radiographs where available)")
    convert.set_defaults(run=_convert)

    submit = commands.add_parser(
        "submit", help="classify image files with a running service",
        description="Upload image files (as `predict` finds them; folders are searched recursively) to the "
                    "service at --api, in chunks; "
                    "with --wait or --out, wait for every result and write one row per image. Rerun the same "
                    "command to resume an interrupted run: chunks already accepted are not uploaded again. "
                    "Exit status 1 if any image failed.",
    )
    submit.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image file or folder")
    submit.add_argument("--api", required=True, type=_http_url, metavar="URL",
                        help="the service, e.g. http://127.0.0.1:8000")
    submit.add_argument("--key", metavar="KEY", help=f"API key, if the service needs one (default: ${API_KEY_ENV})")
    submit.add_argument("--out", type=Path, metavar="FILE",
                        help=f"write the results to FILE, CSV (.csv) or JSON lines (.jsonl); implies --wait; "
                             f"progress is kept in FILE{STATE_SUFFIX} for a rerun")
    submit.add_argument("--wait", action="store_true",
                        help="wait for the results and write them (as JSON lines on stdout without --out); "
                             "without it, print the batch ids")
    submit.add_argument("--chunk-size", type=_positive_int, default=DEFAULT_CHUNK_FILES, metavar="N",
                        help="most images per request (default: %(default)s)")
    submit.add_argument("--chunk-bytes", type=_positive_int, default=DEFAULT_CHUNK_BYTES, metavar="BYTES",
                        help="most bytes of images per request; a larger image goes alone (default: %(default)s)")
    submit.set_defaults(run=_submit)
    return parser


# --- predict ---------------------------------------------------------------------------------------------------

def _predict(args: argparse.Namespace) -> Exit:
    paths = find_images(args.paths)
    classifier = _load(args, args.manifest)
    labels = classifier.manifest.labels
    if args.csv:
        _write([_csv_line(["filename", "predicted_class", "confidence", *labels, "error"])])
    failed = False
    for chunk in classify_files(classifier, paths):
        failed = failed or any(isinstance(outcome, Failure) for outcome in chunk)
        _write([_csv_record(outcome, labels) if args.csv else _json_record(outcome) for outcome in chunk])
    return Exit.SOME_FAILED if failed else Exit.OK


def find_images(paths: Sequence[Path]) -> list[Path]:
    """Files named explicitly, in order, and the image files under each folder, sorted."""
    found: list[Path] = []
    for path in paths:
        found.extend(_images_under(path) if path.is_dir() else [path])
    if not found:
        raise UsageError(f"no {'/'.join(IMAGE_SUFFIXES)} files in {', '.join(map(str, paths))}")
    return found


def classify_files(classifier: Classifier, paths: Sequence[Path]) -> Iterator[list[Prediction | Failure]]:
    """Outcomes in the order of `paths`, one list per max_batch files, so memory stays flat however many."""
    with tqdm(total=len(paths), unit="image", file=sys.stderr, dynamic_ncols=True,
              disable=True if len(paths) < 2 else None) as progress:  # None: tqdm shows it on a terminal only
        for start in range(0, len(paths), classifier.max_batch):
            chunk = paths[start:start + classifier.max_batch]
            outcomes = _classify_chunk(classifier, chunk)
            progress.update(len(chunk))
            yield outcomes


def _classify_chunk(classifier: Classifier, paths: Sequence[Path]) -> list[Prediction | Failure]:
    contents = [_read(path) for path in paths]
    classified = iter(classifier.classify(
        (str(path), content) for path, content in zip(paths, contents, strict=True) if isinstance(content, bytes)
    ))
    outcomes: list[Prediction | Failure] = []
    for path, content in zip(paths, contents, strict=True):
        if isinstance(content, Failure):
            outcomes.append(content)
            continue
        outcome = next(classified)
        outcomes.append(outcome if isinstance(outcome, Prediction) else Failure(str(path), str(outcome)))
    return outcomes


def _read(path: Path) -> bytes | Failure:
    try:
        return path.read_bytes()
    except OSError as error:
        return Failure(str(path), f"cannot read the file: {error.strerror or error}")


def _json_record(outcome: Prediction | Failure) -> str:
    if isinstance(outcome, Failure):
        return json.dumps({"filename": outcome.filename, "error": outcome.error})
    return json.dumps(outcome.to_dict())


def _csv_record(outcome: Prediction | Failure, labels: Sequence[str]) -> str:
    if isinstance(outcome, Failure):
        return _csv_line([outcome.filename, "", "", *[""] * len(labels), outcome.error])
    return _csv_line([outcome.filename, outcome.predicted_class, outcome.confidence, *outcome.predictions, ""])


def _csv_line(values: Sequence[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


# --- evaluate --------------------------------------------------------------------------------------------------

def _evaluate(args: argparse.Namespace) -> Exit:
    manifest = load_manifest(args.manifest)
    labelled = labelled_images(args.folder, manifest)  # before the model loads: a wrong layout fails fast
    classifier = _load(args, manifest)
    paths = [path for path, _ in labelled]
    outcomes = (outcome for chunk in classify_files(classifier, paths) for outcome in chunk)
    true, predicted, failures = [], [], []
    for (_, label), outcome in zip(labelled, outcomes, strict=True):
        if isinstance(outcome, Failure):
            failures.append(outcome)
        else:
            true.append(label)
            predicted.append(outcome.predicted_class)
    if not args.json:
        _write([f"skipped {failure.filename}: {failure.error}" for failure in failures], stream=sys.stderr)
    if not true:
        print(f"pneuradnet: none of the {len(labelled)} images in {args.folder} could be classified", file=sys.stderr)
        return Exit.SOME_FAILED
    scores = evaluate(true, predicted, manifest.labels)
    if args.json:
        _write([json.dumps({
            "model": {"name": manifest.name, "version": manifest.version},
            **scores.to_dict(),
            "failed": [{"filename": failure.filename, "error": failure.error} for failure in failures],
        })])
    else:
        _write([format_evaluation(scores, failed=len(failures))])
    return Exit.SOME_FAILED if failures else Exit.OK


def labelled_images(folder: Path, manifest: ModelManifest) -> list[tuple[Path, str]]:
    """(image, true label) pairs from `folder`'s subfolders, each named after a label in any case."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    by_name = {label.casefold(): label for label in manifest.labels}
    expected = ", ".join(manifest.labels)
    subfolders = sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    unknown = [entry.name for entry in subfolders if entry.name.casefold() not in by_name]
    if unknown:
        raise UsageError(
            f"{folder} has subfolders not named after a label of model {manifest.name!r}: {', '.join(unknown)}; "
            f"name each subfolder after one of its labels (in any case): {expected}"
        )
    labelled = [(path, by_name[entry.name.casefold()]) for entry in subfolders for path in _images_under(entry)]
    if not labelled:
        raise UsageError(f"no {'/'.join(IMAGE_SUFFIXES)} files in subfolders of {folder} named after labels {expected}")
    return labelled


def format_evaluation(scores: Evaluation, *, failed: int = 0) -> str:
    """Accuracy, the per-class table and the confusion matrix, for a person to read."""
    lines = [f"accuracy: {scores.accuracy:.4f} ({scores.correct} of {scores.total} images"
             + (f"; {failed} could not be classified)" if failed else ")"), ""]
    lines += _table([
        ["label", "precision", "recall", "f1", "support"],
        *([c.label, _score(c.precision), _score(c.recall), _score(c.f1), str(c.support)] for c in scores.classes),
    ])
    lines += ["", "confusion matrix (rows: true label, columns: predicted label)"]
    lines += _table([
        ["", *scores.labels],
        *([label, *map(str, row)] for label, row in zip(scores.labels, scores.confusion, strict=True)),
    ])
    return "\n".join(lines)


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _table(rows: list[list[str]]) -> list[str]:
    """First column left-aligned, the others right-aligned, two spaces apart."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for first, *others in rows:
        cells = [first.ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(others, widths[1:], strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


# --- info ------------------------------------------------------------------------------------------------------

def _info(args: argparse.Namespace) -> Exit:
    classifier = _load(args, args.manifest)
    manifest = classifier.manifest
    check = self_check(classifier)
    description = {
        "manifest": manifest.model_dump(mode="json"),
        "model_file": str(classifier.model_file),
        "sha256": sha256_of(classifier.model_file),
        "runtime": classifier.runtime.name,
        "self_check": check,
    }
    _write([json.dumps(description) if args.json else _format_info(description)])
    return Exit.OK if check["ok"] else Exit.SOME_FAILED


def self_check(classifier: Classifier) -> dict:
    """Classify a uniform gray image made in memory; ok if it gives probabilities that sum to 1."""
    buffer = io.BytesIO()
    Image.new("L", SELF_CHECK_SIZE, SELF_CHECK_GRAY).save(buffer, "PNG")
    started = time.perf_counter()
    [outcome] = classifier.classify([("self-check.png", buffer.getvalue())])
    elapsed_ms = round((time.perf_counter() - started) * 1000.0, 1)
    if not isinstance(outcome, Prediction):
        return {"ok": False, "error": str(outcome), "ms": elapsed_ms}
    total = sum(outcome.predictions)
    ok = abs(total - 1.0) <= SELF_CHECK_TOLERANCE and all(0.0 <= p <= 1.0 for p in outcome.predictions)
    return {"ok": ok, "probabilities": list(outcome.predictions), "sum": total, "ms": elapsed_ms}


def _format_info(description: dict) -> str:
    manifest, check = description["manifest"], description["self_check"]
    size = manifest["input"]
    if check["ok"]:
        outcome = f"ok, probabilities sum to {check['sum']:.6f} in {check['ms']} ms"
    elif "error" in check:
        outcome = f"FAILED: {check['error']}"
    else:
        outcome = f"FAILED, probabilities {check['probabilities']} sum to {check['sum']:.6f}"
    rows = [
        ("name", manifest["name"]),
        ("version", manifest["version"]),
        ("labels", ", ".join(manifest["labels"])),
        ("input", f"{size['height']}x{size['width']} (height x width), {size['channels']} channels"),
        ("resize", manifest["resize"]),
        ("scaling", manifest["scaling"]),
        ("output", manifest["output"]),
        ("license", manifest["license"]),
        ("model file", description["model_file"]),
        ("sha256", description["sha256"]),
        ("runtime", description["runtime"]),
        ("self-check", outcome),
    ]
    width = max(len(key) for key, _ in rows) + 1
    return "\n".join(f"{key + ':':<{width}} {value}" for key, value in rows)


# --- submit ----------------------------------------------------------------------------------------------------

Chunk = list[tuple[Path, bytes | Failure]]
"""The files of one request, read, in order; a file that could not be read rides along as its Failure."""

Row = tuple[str, dict | Failure]
"""One image's outcome: its local name (path, or ZIP path/member) and its finished job, or why it was not sent."""


def _submit(args: argparse.Namespace) -> Exit:
    out_format = _out_format(args.out)
    paths = find_images(args.paths)
    state_path = args.out.with_name(args.out.name + STATE_SUFFIX) if args.out else None
    accepted = _load_state(state_path)
    rows: list[Row] = []
    with Client(args.api, key=args.key or os.environ.get(API_KEY_ENV) or None) as client:
        with _progress(len(paths), "uploading") as progress:
            for chunk in read_chunks(paths, max_files=args.chunk_size, max_bytes=args.chunk_bytes):
                rows += _send(client, chunk, accepted, state_path, api=args.api)
                progress.update(len(chunk))
        if not (args.wait or args.out):
            return _print_batches(rows)
        rows = _finish(client, rows)
    lines = _csv_rows(rows) if out_format == "csv" else [json.dumps(_json_row(row)) for row in rows]
    if args.out:
        _replace(args.out, "".join(f"{line}\n" for line in lines))
    else:
        _write(lines)
    return Exit.OK if all(_status(outcome) == "succeeded" for _, outcome in rows) else Exit.SOME_FAILED


def read_chunks(paths: Sequence[Path], *, max_files: int, max_bytes: int) -> Iterator[Chunk]:
    """The files read in order, one chunk per request: at most `max_files` files and `max_bytes` bytes (a larger
    file alone), a ZIP archive alone. A chunk is handed over as soon as it is full, before the next file is read."""
    chunk: Chunk = []
    files = size = 0
    for path in paths:
        data = _read(path)
        if isinstance(data, Failure):
            chunk.append((path, data))
            continue
        is_zip = data.startswith(ZIP_MAGIC)
        if files and (is_zip or size + len(data) > max_bytes):
            yield chunk
            chunk, files, size = [], 0, 0
        chunk.append((path, data))
        files, size = files + 1, size + len(data)
        if is_zip or files >= max_files:
            yield chunk
            chunk, files, size = [], 0, 0
    if chunk:
        yield chunk


def chunk_key(files: Sequence[tuple[str, bytes]]) -> str:
    """The Idempotency-Key of a request of these (name, bytes): the same files always give the same key."""
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(hashlib.sha256(name.encode()).digest())
        digest.update(hashlib.sha256(data).digest())
    return IDEMPOTENCY_PREFIX + digest.hexdigest()


def _send(client: Client, chunk: Chunk, accepted: dict[str, str], state_path: Path | None, *, api: str) -> list[Row]:
    """Upload a chunk unless a batch already holds it; its rows, with each job as accepted or as it is now."""
    sent = [(path.name, data) for path, data in chunk if isinstance(data, bytes)]
    jobs: list[dict] = []
    if sent:
        key = chunk_key(sent)
        jobs = _jobs_of(client, accepted[key]) if key in accepted else []
        if not jobs:
            # Never uploaded, or its batch has expired. Killed after the service accepted it but before the state
            # was saved, the same key makes the service answer with that batch instead of a new one.
            submission = client.submit(sent, idempotency_key=key)
            jobs = submission.jobs
            accepted[key] = submission.batch_id
            if state_path:
                _replace(state_path, json.dumps({"api": api, "batches": accepted}, indent=1))
    return _pair(chunk, jobs)


def _jobs_of(client: Client, batch_id: str) -> list[dict]:
    """The jobs of a batch accepted earlier; none if it has expired (or belongs to another service)."""
    try:
        return client.batch(batch_id)
    except ServiceError as error:
        if error.status == 404:
            return []
        raise


def _pair(chunk: Chunk, jobs: list[dict]) -> list[Row]:
    """Each file of the chunk with its job: one per image in order, or every job for a ZIP archive (alone)."""
    sent = [data for _, data in chunk if isinstance(data, bytes)]
    zipped = len(sent) == 1 and sent[0].startswith(ZIP_MAGIC)
    if not zipped and len(jobs) != len(sent):
        raise ServiceError(None, f"the service made {len(jobs)} jobs of {len(sent)} images")
    remaining = iter(jobs)
    rows: list[Row] = []
    for path, data in chunk:
        if isinstance(data, Failure):
            rows.append((str(path), data))
        elif zipped:
            rows += [(f"{path}/{job['filename']}", job) for job in jobs]
        else:
            rows.append((str(path), next(remaining)))
    return rows


def _finish(client: Client, rows: list[Row]) -> list[Row]:
    """The rows with every job finished, long-polling those that are not yet."""
    jobs = {job["id"]: job for _, job in rows if isinstance(job, dict)}
    pending = [job_id for job_id, job in jobs.items() if job["status"] not in FINISHED]
    with _progress(len(jobs), "classifying", initial=len(jobs) - len(pending)) as progress:
        for job in client.finished(pending):
            jobs[job["id"]] = job
            progress.update(1)
    return [(name, jobs[outcome["id"]] if isinstance(outcome, dict) else outcome) for name, outcome in rows]


def _print_batches(rows: list[Row]) -> Exit:
    batches = dict.fromkeys(outcome["batch_id"] for _, outcome in rows if isinstance(outcome, dict))
    failures = [(name, outcome) for name, outcome in rows if isinstance(outcome, Failure)]
    _write([f"not sent {name}: {failure.error}" for name, failure in failures], stream=sys.stderr)
    _write(list(batches))
    return Exit.SOME_FAILED if failures else Exit.OK


def _csv_rows(rows: list[Row]) -> list[str]:
    """Columns as the service's own CSV export: filename (here the local path), status, predicted_class,
    confidence, a probability per label, error, job_id."""
    results = [outcome["result"] for _, outcome in rows if isinstance(outcome, dict) and outcome["result"]]
    labels = list(dict.fromkeys(label for result in results for label in result["labels"]))
    lines = [_csv_line(["filename", "status", "predicted_class", "confidence", *labels, "error", "job_id"])]
    for name, outcome in rows:
        if isinstance(outcome, Failure):
            lines.append(_csv_line([name, "failed", "", "", *[""] * len(labels), outcome.error, ""]))
            continue
        result = outcome["result"] or {}
        probabilities = dict(zip(result.get("labels", []), result.get("predictions", []), strict=True))
        error = (outcome["error"] or {}).get("detail", "")
        lines.append(_csv_line([name, outcome["status"], result.get("predicted_class", ""),
                                result.get("confidence", ""), *(probabilities.get(label, "") for label in labels),
                                error, outcome["id"]]))
    return lines


def _json_row(row: Row) -> dict:
    """The job's record as the service answers it, plus `path`, the local file."""
    name, outcome = row
    if isinstance(outcome, Failure):
        return {"path": name, "id": None, "status": "failed", "result": None, "error": {"detail": outcome.error}}
    return {"path": name, **outcome}


def _status(outcome: dict | Failure) -> str:
    return "failed" if isinstance(outcome, Failure) else outcome["status"]


def _out_format(out: Path | None) -> str:
    if out is None:
        return "jsonl"
    if out.suffix.lower() not in (".csv", ".jsonl"):
        raise UsageError(f"--out {out}: name a .csv or a .jsonl file")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: there is no folder {out.parent}")
    return out.suffix.lower().lstrip(".")


def _load_state(path: Path | None) -> dict[str, str]:
    """Idempotency key -> batch id of the chunks a previous run got accepted."""
    if path is None or not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text())["batches"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"cannot read {path} ({error}); delete it to start again: the service still recognises "
                         "chunks it has accepted") from error


def _replace(path: Path, text: str) -> None:
    """Write the file whole or not at all: a run killed while writing leaves the previous version."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _progress(total: int, description: str, *, initial: int = 0) -> tqdm:
    return tqdm(total=total, initial=initial, desc=description, unit="image", file=sys.stderr, dynamic_ncols=True,
                disable=True if total < 2 else None)  # None: tqdm shows it on a terminal only


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text


# --- convert ---------------------------------------------------------------------------------------------------

def _convert(args: argparse.Namespace) -> Exit:
    from pneuradnet.conversion import onnx_model_for, sidecar_for

    manifest = load_manifest(args.manifest)
    model_file = resolve_model_file(manifest, args.model_path)
    images = find_images(args.check) if args.check else []
    check_inputs = np.stack([to_model_input(decode_image(path.read_bytes()), manifest) for path in images]) \
        if images else None
    onnx_file = onnx_model_for(model_file, cache_dir=args.cache_dir, check_inputs=check_inputs,
                               logits=manifest.output == "logits")
    verification = json.loads(sidecar_for(onnx_file).read_text())["verification"]
    print(f"{onnx_file}\nverified on {verification['inputs']} {verification['input_kind']} inputs: largest difference "
          f"from TensorFlow {verification['max_abs_diff']:.2e} (tolerance {verification['tolerance']:.0e})")
    return Exit.OK


# --- shared ----------------------------------------------------------------------------------------------------

def _load(args: argparse.Namespace, manifest: str | ModelManifest) -> Classifier:
    return Classifier.load(manifest, model_path=args.model_path, max_batch=args.batch_size, runtime=args.runtime,
                           cache_dir=args.cache_dir)


def _images_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def _write(lines: Sequence[str], *, stream: TextIO | None = None) -> None:
    """Print lines without tearing a progress bar that shares the terminal."""
    stream = stream or sys.stdout
    if lines:
        tqdm.write("\n".join(lines), file=stream)
        stream.flush()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _one_line(error: Exception) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


if __name__ == "__main__":
    raise SystemExit(main())
