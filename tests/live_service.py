"""Fixtures that run the real service: Redis (a database of its own), a Celery worker process, the API process."""

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from redis import Redis

from service.jobstore import JobStore
from service.keys import PREFIX
from service.queue import make_celery, send_classify_task
from service.settings import Settings
from tests import processes
from tests.processes import stop

TEST_REDIS_URL = os.environ.get("PNEURADNET_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

UNCONSUMED_REDIS_URL = os.environ.get("PNEURADNET_UNCONSUMED_REDIS_URL", "redis://127.0.0.1:6379/10")
"""A database no worker of the test session consumes: tests that read back the tasks they enqueue use it."""

# Whatever this test process enqueues or reads through the service's own settings goes to the test database.
os.environ["REDIS_URL"] = TEST_REDIS_URL


def wipe_jobs(url: str = TEST_REDIS_URL) -> None:
    """Delete the job store's keys but the workers' announcements; the broker's keys stay, so a running worker
    keeps its queue bindings."""
    redis = Redis.from_url(url)
    keys = [key for key in redis.scan_iter(f"{PREFIX}:*", count=1000) if not key.startswith(b"pneuradnet:worker")]
    if keys:
        redis.delete(*keys)
    redis.close()


@contextmanager
def empty_database(url: str = TEST_REDIS_URL, *, decode: bool = True) -> Iterator[Redis]:
    """A client of the database at `url`, flushed before and after: for tests that own a whole database (no worker
    of the session consumes it, or nothing they do enqueues)."""
    client = Redis.from_url(url, decode_responses=decode)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def enqueue(job_ids: list[str], url: str = TEST_REDIS_URL) -> None:
    """Send a classify task for these jobs to the test database's queue, as the API does."""
    send_classify_task(job_ids, app=make_celery(Settings(redis_url=url)))


def service_env(**overrides: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": TEST_REDIS_URL, "TF_CPP_MIN_LOG_LEVEL": "2", "JOB_TTL": "3600",
            "PYTHONUNBUFFERED": "1", **overrides}


def start_worker(log_path: Path, **env: str) -> subprocess.Popen:
    return processes.start_worker(log_path, service_env(**env))


def start_api(log_path: Path, **env: str) -> tuple[subprocess.Popen, str]:
    return processes.start_api(log_path, service_env(**env))


@pytest.fixture(scope="session")
def broker_clean() -> None:
    """Start the session with an empty test database: no tasks left over from an earlier run."""
    Redis.from_url(TEST_REDIS_URL).flushdb()


@pytest.fixture
def redis(broker_clean: None) -> Iterator[Redis]:
    """A plain client of the test database, for what the store's own methods do not show (TTLs, channels)."""
    client = Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def store(broker_clean: None) -> Iterator[JobStore]:
    wipe_jobs()
    job_store = JobStore(TEST_REDIS_URL, ttl=600)
    yield job_store
    job_store.close()
    wipe_jobs()


LIVE_BULK_CHUNK = 16
"""Images per bulk task of the live service: a request of its MAX_FILES_PER_REQUEST (40) makes several tasks, each
small enough for Flower to show all its arguments (Celery cuts a task's argsrepr at 1,024 characters: 25 job ids).
Chunks of several passes are tested with workers of their own (tests/worker)."""


@pytest.fixture(scope="session")
def worker_process(broker_clean: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen]:
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    process = start_worker(log_path, BULK_CHUNK=str(LIVE_BULK_CHUNK))
    yield process
    stop(process)


@pytest.fixture(scope="session")
def api_url(broker_clean: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_api(tmp_path_factory.mktemp("api") / "api.log", MAX_FILES_PER_REQUEST="40",
                             MAX_UPLOAD_BYTES=str(30 * 1024 * 1024), BULK_CHUNK=str(LIVE_BULK_CHUNK))
    yield url
    stop(process)


@pytest.fixture
def client(api_url: str, worker_process: subprocess.Popen) -> Iterator[httpx.Client]:
    """An HTTP client of the live API, with a live worker behind it and an empty job store."""
    wipe_jobs()
    with httpx.Client(base_url=api_url, timeout=60) as http:
        yield http
    wipe_jobs()
