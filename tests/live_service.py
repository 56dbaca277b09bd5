"""Fixtures that run the real service: Redis (a database of its own), a Celery worker process, the API process."""

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from service.jobstore import PREFIX, JobStore

ROOT = Path(__file__).resolve().parent.parent
TEST_REDIS_URL = os.environ.get("PNEURADNET_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
STARTUP_TIMEOUT = 120.0

# Whatever this test process enqueues or reads through the service's own settings goes to the test database.
os.environ["REDIS_URL"] = TEST_REDIS_URL


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wipe_jobs(url: str = TEST_REDIS_URL) -> None:
    """Delete the job store's keys but the workers' announcements; the broker's keys stay, so a running worker
    keeps its queue bindings."""
    redis = Redis.from_url(url)
    keys = [key for key in redis.scan_iter(f"{PREFIX}:*", count=1000) if not key.startswith(b"pneuradnet:worker:")]
    if keys:
        redis.delete(*keys)
    redis.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(**overrides: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": TEST_REDIS_URL, "TF_CPP_MIN_LOG_LEVEL": "2", "JOB_TTL": "3600",
            "PYTHONUNBUFFERED": "1", **overrides}


def start_worker(log_path: Path, **env: str) -> subprocess.Popen:
    """A real worker (prefork pool, one model process) that logs to log_path; returns once its model is loaded."""
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--concurrency", "1",
               "--loglevel", "INFO", "--without-gossip", "--without-mingle", "-n", f"test-{uuid.uuid4().hex[:8]}@%h"]
    log = log_path.open("ab")
    # A session of its own, so that a test can kill the worker with all its pool processes at once.
    process = subprocess.Popen(command, cwd=ROOT, env=service_env(**env), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    wait_until(lambda: "loaded from" in log_path.read_text() or process.poll() is not None,
               timeout=STARTUP_TIMEOUT, what="the worker to load its model")
    if process.poll() is not None:
        raise RuntimeError(f"the worker exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def broker_clean() -> None:
    """Start the session with an empty test database: no tasks left over from an earlier run."""
    Redis.from_url(TEST_REDIS_URL).flushdb()


@pytest.fixture
def store(broker_clean: None) -> Iterator[JobStore]:
    wipe_jobs()
    job_store = JobStore(TEST_REDIS_URL, ttl=600)
    yield job_store
    job_store.close()
    wipe_jobs()


@pytest.fixture(scope="session")
def worker_process(broker_clean: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen]:
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    process = start_worker(log_path)
    yield process
    stop(process)


def start_api(log_path: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """A real API process on a free port; returns once it answers /healthz."""
    port = free_port()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=service_env(**env), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None

    wait_until(answers, timeout=STARTUP_TIMEOUT, what="the API to answer")
    if process.poll() is not None:
        raise RuntimeError(f"the API exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
    return process, url


@pytest.fixture(scope="session")
def api_url(broker_clean: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_api(tmp_path_factory.mktemp("api") / "api.log", MAX_FILES_PER_REQUEST="40",
                             MAX_UPLOAD_BYTES=str(30 * 1024 * 1024))
    yield url
    stop(process)


@pytest.fixture
def client(api_url: str, worker_process: subprocess.Popen) -> Iterator[httpx.Client]:
    """An HTTP client of the live API, with a live worker behind it and an empty job store."""
    wipe_jobs()
    with httpx.Client(base_url=api_url, timeout=60) as http:
        yield http
    wipe_jobs()
