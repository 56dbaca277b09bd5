"""The commands that run the model in this process: `predict`, `evaluate`, `info` and `convert`."""

import argparse
import io
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pneuradnet.classifier import Classifier
from pneuradnet.cli.common import Exit, Failure, find_images, progress_bar, read_file, write_lines
from pneuradnet.cli.labelled import labelled_by_file, labelled_by_subfolder
from pneuradnet.csvfile import ResultTable
from pneuradnet.evaluation import Evaluation, evaluate
from pneuradnet.images import decode_image
from pneuradnet.manifest import ModelManifest, load_manifest, resolve_model_file, sha256_of
from pneuradnet.preprocess import to_model_input
from pneuradnet.results import Prediction

SELF_CHECK_SIZE = (512, 512)
"""Width and height of the uniform gray image that `info` classifies."""

SELF_CHECK_GRAY = 128
"""Its pixel value."""

SELF_CHECK_TOLERANCE = 1e-5
"""How far from 1 the self-check's probabilities may sum."""


def run_predict(args: argparse.Namespace) -> Exit:
    paths = find_images(args.paths)
    classifier = _load_classifier(args, args.manifest)
    table = ResultTable(classifier.manifest.labels, jobs=False)
    if args.csv:
        write_lines([table.header()])
    failed = False
    for chunk in classify_files(classifier, paths):
        failed = failed or any(isinstance(outcome, Failure) for outcome in chunk)
        write_lines([_csv_record(outcome, table) if args.csv else _json_record(outcome) for outcome in chunk])
    return Exit.SOME_FAILED if failed else Exit.OK


def classify_files(classifier: Classifier, paths: Sequence[Path]) -> Iterator[list[Prediction | Failure]]:
    """Outcomes in the order of `paths`, one list per max_batch files, so memory stays flat however many."""
    with progress_bar(len(paths)) as progress:
        for start in range(0, len(paths), classifier.max_batch):
            chunk = paths[start:start + classifier.max_batch]
            outcomes = _classify_chunk(classifier, chunk)
            progress.update(len(chunk))
            yield outcomes


def _classify_chunk(classifier: Classifier, paths: Sequence[Path]) -> list[Prediction | Failure]:
    contents = [read_file(path) for path in paths]
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


def _json_record(outcome: Prediction | Failure) -> str:
    if isinstance(outcome, Failure):
        return json.dumps({"filename": outcome.filename, "error": outcome.error})
    return json.dumps({"filename": outcome.filename, **outcome.to_dict()})


def _csv_record(outcome: Prediction | Failure, table: ResultTable) -> str:
    if isinstance(outcome, Failure):
        return table.row(outcome.filename, None, error=outcome.error)
    return table.row(outcome.filename, outcome.to_dict())


def run_evaluate(args: argparse.Namespace) -> Exit:
    manifest = load_manifest(args.manifest)
    # Before the model loads: a wrong layout or labels file fails fast.
    labelled = labelled_by_file(args.folder, args.labels, manifest) if args.labels \
        else labelled_by_subfolder(args.folder, manifest)
    classifier = _load_classifier(args, manifest)
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
        write_lines([f"skipped {failure.filename}: {failure.error}" for failure in failures], stream=sys.stderr)
    if not true:
        print(f"pneuradnet: none of the {len(labelled)} images in {args.folder} could be classified", file=sys.stderr)
        return Exit.SOME_FAILED
    scores = evaluate(true, predicted, manifest.labels)
    if args.json:
        write_lines([json.dumps({
            "model": {"name": manifest.name, "version": manifest.version},
            **scores.to_dict(),
            "failed": [{"filename": failure.filename, "error": failure.error} for failure in failures],
        })])
    else:
        write_lines([format_evaluation(scores, failed=len(failures))])
    return Exit.SOME_FAILED if failures else Exit.OK


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


def run_info(args: argparse.Namespace) -> Exit:
    classifier = _load_classifier(args, args.manifest)
    manifest = classifier.manifest
    check = self_check(classifier)
    description = {
        "manifest": manifest.model_dump(mode="json"),
        "model_file": str(classifier.model_file),
        "sha256": sha256_of(classifier.model_file),
        "runtime": classifier.runtime.name,
        "self_check": check,
    }
    write_lines([json.dumps(description) if args.json else _format_info(description)])
    return Exit.OK if check["ok"] else Exit.SOME_FAILED


def self_check(classifier: Classifier) -> dict[str, Any]:
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


def _format_info(description: dict[str, Any]) -> str:
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


def run_convert(args: argparse.Namespace) -> Exit:
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


def _load_classifier(args: argparse.Namespace, manifest: str | ModelManifest) -> Classifier:
    return Classifier.load(manifest, model_path=args.model_path, max_batch=args.batch_size, runtime=args.runtime,
                           cache_dir=args.cache_dir)
