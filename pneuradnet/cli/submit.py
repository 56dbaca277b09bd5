"""`pneuradnet submit`: classify image files with a running service, in chunks, resumable.

Each chunk is one request with an Idempotency-Key made from its files, so a rerun after an interruption uploads
nothing the service has already accepted; with --out, the accepted batches are also kept beside the output file.
"""

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pneuradnet.cli.common import Exit, Failure, UsageError, find_images, read_file, write_lines
from pneuradnet.cli.progress import PLAIN_INTERVAL, Progress
from pneuradnet.client import FINISHED, Client, ServiceError
from pneuradnet.csvfile import ResultTable, csv_text, labels_of

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

S3_SCHEME = "s3://"
"""How an image already in a bucket is named on the command line: submitted by reference, not uploaded."""

IDEMPOTENCY_PREFIX = "pneuradnet-submit-v1-"
"""Start of the Idempotency-Key of a `submit` request; the rest is a SHA-256 of its file names and contents."""


Chunk = list[tuple[Path, bytes | Failure]]
"""The files of one request, read, in order; a file that could not be read rides along as its Failure."""

Row = tuple[str, dict[str, Any] | Failure]
"""One image's outcome: its local name (path, or ZIP path/member) and its finished job, or why it was not sent."""


def run_submit(args: argparse.Namespace) -> Exit:
    out_format = _out_format(args.out)
    references = [path for path in args.paths if path.startswith(S3_SCHEME)]
    if references and len(references) != len(args.paths):
        raise UsageError("give image files and folders, or s3:// locations, not both in one command")
    state_path = args.out.with_name(args.out.name + STATE_SUFFIX) if args.out else None
    accepted = _load_state(state_path)
    rows: list[Row] = []
    with Client(args.api, key=args.key or os.environ.get(API_KEY_ENV) or None) as client:
        if references:
            rows = _send_references(client, references, accepted, state_path, api=args.api)
        else:
            paths = find_images([Path(path) for path in args.paths])
            with Progress("uploaded", len(paths)) as progress:
                for chunk in read_chunks(paths, max_files=args.chunk_size, max_bytes=args.chunk_bytes):
                    rows += _send(client, chunk, accepted, state_path, api=args.api)
                    progress.advance(len(chunk), failed=sum(isinstance(data, Failure) for _, data in chunk))
        if not (args.wait or args.out):
            return _print_batches(rows)
        rows = _finish(client, rows)
        lines = _csv_rows(rows, _served_labels(client, rows)) if out_format == "csv" \
            else [json.dumps(_json_row(row)) for row in rows]
    if args.out:
        _replace(args.out, csv_text(lines))
    else:
        write_lines(lines)
    return Exit.OK if all(_status(outcome) == "succeeded" for _, outcome in rows) else Exit.SOME_FAILED


def read_chunks(paths: Sequence[Path], *, max_files: int, max_bytes: int) -> Iterator[Chunk]:
    """The files read in order, one chunk per request: at most `max_files` files and `max_bytes` bytes (a larger
    file alone), a ZIP archive alone. A chunk is handed over as soon as it is full, before the next file is read."""
    chunk: Chunk = []
    files = size = 0
    for path in paths:
        data = read_file(path)
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
    jobs: list[dict[str, Any]] = []
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


def _send_references(client: Client, references: list[str], accepted: dict[str, str], state_path: Path | None, *,
                     api: str) -> list[Row]:
    """Submit images already in a bucket: each folder (ending in /) in a request of its own, the single objects
    together; nothing is uploaded. Each request's Idempotency-Key is made from what it names, so a rerun resumes."""
    folders = [reference for reference in references if reference.endswith("/")]
    objects = [reference for reference in references if not reference.endswith("/")]
    requests = [{"prefix": folder} for folder in folders] + ([{"images": objects}] if objects else [])
    rows: list[Row] = []
    for request in requests:
        key = IDEMPOTENCY_PREFIX + hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        jobs = _jobs_of(client, accepted[key]) if key in accepted else []
        if not jobs:
            submission = client.submit_references(**request, idempotency_key=key)
            jobs = submission.jobs
            accepted[key] = submission.batch_id
            if state_path:
                _replace(state_path, json.dumps({"api": api, "batches": accepted}, indent=1))
        if "prefix" in request:
            rows += [(f"{request['prefix']}{job['filename']}", job) for job in jobs]
        else:
            rows += list(zip(objects, jobs, strict=True))
    return rows


def _jobs_of(client: Client, batch_id: str) -> list[dict[str, Any]]:
    """The jobs of a batch accepted earlier; none if it has expired (or belongs to another service)."""
    try:
        return client.batch(batch_id)
    except ServiceError as error:
        if error.status == 404:
            return []
        raise


def _pair(chunk: Chunk, jobs: list[dict[str, Any]]) -> list[Row]:
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
    failed = sum(job["status"] != "succeeded" for job in jobs.values() if job["status"] in FINISHED)
    with Progress("finished", len(jobs), initial=len(jobs) - len(pending), failed=failed,
                  every=PLAIN_INTERVAL) as progress:
        for job in client.finished(pending):
            jobs[job["id"]] = job
            progress.advance(1, failed=job["status"] != "succeeded")
    return [(name, jobs[outcome["id"]] if isinstance(outcome, dict) else outcome) for name, outcome in rows]


def _print_batches(rows: list[Row]) -> Exit:
    batches = dict.fromkeys(outcome["batch_id"] for _, outcome in rows if isinstance(outcome, dict))
    failures = [(name, outcome) for name, outcome in rows if isinstance(outcome, Failure)]
    write_lines([f"not sent {name}: {failure.error}" for name, failure in failures], stream=sys.stderr)
    write_lines(list(batches))
    return Exit.SOME_FAILED if failures else Exit.OK


def _csv_rows(rows: list[Row], model_labels: list[str]) -> list[str]:
    """The service's own CSV export, with the local path as filename (pneuradnet.csvfile)."""
    table = ResultTable(labels_of((outcome["result"] for _, outcome in rows if isinstance(outcome, dict)),
                                  model_labels))
    lines = [table.header()]
    for name, outcome in rows:
        if isinstance(outcome, Failure):
            lines.append(table.row(name, None, status="failed", error=outcome.error))
        else:
            lines.append(table.row(name, outcome["result"], status=outcome["status"],
                                   error=(outcome["error"] or {}).get("detail", ""), job_id=outcome["id"]))
    return lines


def _served_labels(client: Client, rows: list[Row]) -> list[str]:
    """The model's labels for the CSV's columns: a result has them; when no image succeeded, the service says
    which models its workers serve. Empty (the columns then come from the results) if it cannot say."""
    if any(isinstance(outcome, dict) and outcome["result"] for _, outcome in rows):
        return []  # the results name them, in the model's order
    try:
        models = client.models()
    except ServiceError:
        return []
    return list(dict.fromkeys(label for model in models for label in model["labels"]))


def _json_row(row: Row) -> dict[str, Any]:
    """The job's record as the service answers it, plus `path`, the local file."""
    name, outcome = row
    if isinstance(outcome, Failure):
        return {"path": name, "id": None, "status": "failed", "result": None, "error": {"detail": outcome.error}}
    return {"path": name, **outcome}


def _status(outcome: dict[str, Any] | Failure) -> str:
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


def http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text
