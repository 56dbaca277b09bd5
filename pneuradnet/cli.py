"""The `pneuradnet` command: classify image files, score a labelled folder, describe the active model.

Exit status: 0 when every image was classified, 1 when some image failed (or `info`'s self-check did),
2 for a usage or library error (bad manifest, missing model file, ...), reported on one line of stderr.
"""

import argparse
import csv
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

from PIL import Image
from tqdm import tqdm

from pneuradnet import __version__
from pneuradnet.classifier import DEFAULT_MAX_BATCH, Classifier
from pneuradnet.errors import PneuradnetError
from pneuradnet.evaluation import Evaluation, evaluate
from pneuradnet.manifest import ModelManifest, load_manifest, sha256_of
from pneuradnet.results import Prediction

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""File name endings (in any case) picked up when a folder is searched; files named explicitly are always tried."""

TF_CPP_MIN_LOG_LEVEL = "2"
"""Hides TensorFlow's C++ INFO and WARNING start-up lines, unless the user set the variable themselves."""

SELF_CHECK_SIZE = (512, 512)
"""Width and height of the uniform gray image that `info` classifies."""

SELF_CHECK_GRAY = 128
"""Its pixel value."""

SELF_CHECK_TOLERANCE = 1e-5
"""How far from 1 the self-check's probabilities may sum."""


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

    parser = argparse.ArgumentParser(
        prog="pneuradnet",
        description="Chest radiograph pneumonia classifier. Decision support, not a diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict", parents=[common], help="classify image files",
        description="Classify PNG/JPEG files; folders are searched recursively. One JSON line per image, "
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


# --- shared ----------------------------------------------------------------------------------------------------

def _load(args: argparse.Namespace, manifest: str | ModelManifest) -> Classifier:
    return Classifier.load(manifest, model_path=args.model_path, max_batch=args.batch_size)


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
