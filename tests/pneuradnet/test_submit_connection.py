"""`pneuradnet submit` and the client facing an address where nothing listens, a service that is busy then
answers, and a service that goes away mid-run; and how `submit` shows its progress. No model: the service here is
a small HTTP server of the test, which speaks the API's few routes that `submit` uses."""

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pneuradnet.client import Client, ServiceUnreachableError
from pneuradnet.results import Prediction
from tests.processes import ROOT, free_port

UNKNOWN_JOB = "00000000-0000-4000-8000-000000000000"
PROMPT_FAILURE = 5.0
"""Seconds within which `submit` must say that nothing listens at its address."""


class StandInService(ThreadingHTTPServer):
    """POST /jobs answers 503 (Retry-After: 1) `busy` times, then accepts: one queued job per file, each of
    which GET /jobs/{id} then reports succeeded. Every request is noted as `METHOD path`."""

    def __init__(self, *, busy: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.busy = busy
        self.requests: list[str] = []
        self.jobs: dict[str, dict] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StandInService

    def do_POST(self) -> None:
        self.server.requests.append(f"POST {self.path}")
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.busy:
            self.server.busy -= 1
            self._answer(503, {"type": "urn:pneuradnet:problem:store-unavailable", "status": 503,
                               "detail": "the job store does not answer"}, {"Retry-After": "1"})
            return
        batch_id = str(uuid.uuid4())
        jobs = [self._job(batch_id, part.split(b'"', 1)[0].decode())
                for part in body.split(b'filename="')[1:]]
        self._answer(202, {"batch_id": batch_id, "jobs": [{**job, "status": "queued", "result": None}
                                                           for job in jobs]})

    def do_GET(self) -> None:
        self.server.requests.append(f"GET {self.path}")
        job = self.server.jobs.get(self.path.split("?")[0].removeprefix("/jobs/"))
        if job is None:
            self._answer(404, {"type": "urn:pneuradnet:problem:job-not-found", "status": 404,
                               "detail": "there is no such job"})
        else:
            self._answer(200, job)

    def _job(self, batch_id: str, filename: str) -> dict:
        result = Prediction(filename=filename, labels=("NORMAL", "PNEUMONIA"), predictions=(0.25, 0.75),
                            model_name="xception-pneumonia", model_version="0.3.0", runtime="onnxruntime").to_dict()
        job = {"id": str(uuid.uuid4()), "batch_id": batch_id, "filename": filename, "status": "succeeded",
               "result": result, "error": None}
        self.server.jobs[job["id"]] = job
        return job

    def _answer(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if status < 400 else "application/problem+json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:  # quiet: pytest shows what the test asserts
        pass


@pytest.fixture
def stand_in() -> Iterator[StandInService]:
    server = StandInService()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def two_images(tmp_path: Path) -> list[Path]:
    """Two files named like images; the stand-in service never looks inside them."""
    paths = [tmp_path / "first.png", tmp_path / "second.png"]
    for path in paths:
        path.write_bytes(b"pixels of " + path.name.encode())
    return paths


def submit(*args: object, stderr: int | None = subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pneuradnet.cli", "submit", *map(str, args)], stdout=subprocess.PIPE,
                          stderr=stderr, text=True, cwd=ROOT, timeout=120)


def test_submit_where_nothing_listens_fails_at_once_with_a_clear_message(two_images: list[Path]):
    address = f"http://127.0.0.1:{free_port()}"

    started = time.monotonic()
    result = submit(*two_images, "--api", address, "--wait")
    elapsed = time.monotonic() - started

    assert elapsed < PROMPT_FAILURE  # it took 32 s of retries before
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"pneuradnet: error: cannot connect to {address}: [Errno 111] Connection refused; "
        "is the service running at this address?"]


def test_submit_waits_out_a_busy_service_then_uploads(stand_in: StandInService, two_images: list[Path]):
    stand_in.busy = 2

    result = submit(*two_images, "--api", stand_in.url, "--wait")

    assert result.returncode == 0, result.stderr
    assert stand_in.requests[:3] == ["POST /jobs"] * 3  # two 503s, each retried after its Retry-After
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(record["path"], record["status"]) for record in records] == [(str(p), "succeeded") for p in two_images]


def test_the_client_retries_a_service_that_answered_and_then_went_away(stand_in: StandInService):
    pauses: list[float] = []
    with Client(stand_in.url, max_attempts=3, sleep=pauses.append) as service:
        with pytest.raises(Exception, match="no such job"):
            service.get(UNKNOWN_JOB)  # an answer: the service is there
        stand_in.shutdown()
        stand_in.server_close()  # now nothing listens: a restart, a dropped link

        with pytest.raises(ServiceUnreachableError) as raised:
            service.get(UNKNOWN_JOB)

    assert pauses == [1.0, 2.0]  # retried, as a failure in the middle of a run is
    assert "Connection refused" in str(raised.value)


def test_a_client_that_never_reached_the_service_does_not_retry():
    pauses: list[float] = []

    nowhere = Client(f"http://127.0.0.1:{free_port()}", max_attempts=3, sleep=pauses.append)
    with nowhere, pytest.raises(ServiceUnreachableError) as raised:
        nowhere.get(UNKNOWN_JOB)

    assert raised.value.status is None
    assert pauses == []


def test_without_a_terminal_submit_reports_progress_in_plain_lines(stand_in: StandInService, two_images: list[Path],
                                                                     tmp_path: Path):
    out = tmp_path / "results.csv"

    result = submit(*two_images, "--api", stand_in.url, "--out", out, "--chunk-size", 1)

    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["uploaded 1 of 2 images", "uploaded 2 of 2 images",
                                          "finished 2 of 2 images"]
    assert len(out.read_text().splitlines()) == 3


def test_on_a_terminal_submit_shows_progress_bars(stand_in: StandInService, two_images: list[Path],
                                                  tmp_path: Path):
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    try:
        result = submit(*two_images, "--api", stand_in.url, "--out", tmp_path / "results.csv", stderr=terminal)
        os.close(terminal)
        shown = _read_all(controller)
    finally:
        os.close(controller)

    assert result.returncode == 0
    assert "uploaded: 100%" in shown and "finished: 100%" in shown
    assert "2/2" in shown
    assert "uploaded 2 of 2 images" not in shown  # the bars, not the plain lines


def _read_all(descriptor: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(descriptor, 4096)
        except OSError:  # the terminal's other end is closed: everything has been read
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
