"""Starting the service's processes on this machine and waiting until they are ready: for tests and `bench/`."""

import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 120.0
"""Seconds a process may take to be ready (a worker loads TensorFlow and the model)."""


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_worker(log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """A worker (prefork pool) logging to log_path; returns once a model process has loaded its model."""
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--loglevel", "INFO",
               "--without-heartbeat", "--without-gossip", "--without-mingle", "-n", f"local-{uuid.uuid4().hex[:8]}@%h"]
    with log_path.open("ab") as log:
        # A session of its own, so that the worker can be killed with all its pool processes at once.
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    wait_until(lambda: "loaded from" in log_path.read_text() or process.poll() is not None,
               timeout=STARTUP_TIMEOUT, what="the worker to load its model")
    if process.poll() is not None:
        raise RuntimeError(f"the worker exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
    return process


def start_api(log_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """An API process on a free port; returns it and its URL once it answers /healthz."""
    port = free_port()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for_api(process, url, log_path)
    return process, url


def wait_for_api(process: subprocess.Popen, url: str, log_path: Path) -> None:
    """Return once the API process answers /healthz at `url`; raise with its log's end if it exits first."""
    def answers() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None

    wait_until(answers, timeout=STARTUP_TIMEOUT, what="the API to answer")
    if process.poll() is not None:
        raise RuntimeError(f"the API exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")


FORWARD_PASS = re.compile(r"forward pass of (\d+) images")
TASK_RECEIVED = re.compile(r"Task pneuradnet\.classify\[[^\]]+\] received")


def forward_passes(*logs: Path) -> int:
    """Images the model processes logging to these files ran through a forward pass (worker/processing.py logs
    each pass): the work done, which no state machine can hide."""
    return sum(images_passed(log.read_text()) for log in logs)


def images_passed(log_text: str) -> int:
    """Images the forward passes logged in this text ran."""
    return sum(int(count) for count in FORWARD_PASS.findall(log_text))


def task_runs(*logs: Path) -> int:
    """Classify tasks the workers logging to these files took from the broker (a task handed out twice counts
    twice)."""
    return sum(len(TASK_RECEIVED.findall(log.read_text())) for log in logs)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (a worker finishes its batch), then SIGKILL after 30 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
