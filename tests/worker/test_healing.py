"""Nothing stuck, nothing lost, with real processes: a Redis restart at three moments of a bulk, records that
expire, and an API that dies between storing a batch and enqueueing it. The job store is the source of truth and
the reconciler (service/reconciler.py) makes the queue agree with it.

Redis runs as a deployment runs it (append-only file, fsync every second), started by the test on a port of its
own, so that restarting it disturbs no other test.
"""

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from pneuradnet.client import Client
from service.faults import DIED_EXIT_CODE, FAULT_ENV
from service.jobstore import JobStatus, JobStore
from service.queue import VISIBILITY_MARGIN
from service.reconciler import STRANDED_AFTER
from tests.live_service import start_api, start_worker
from tests.processes import forward_passes, free_port, stop, wait_until

pytestmark = pytest.mark.model

JOB_TIMEOUT = 5
SWEEP_INTERVAL = 2
SETTINGS = {"JOB_TIMEOUT": str(JOB_TIMEOUT), "SWEEP_INTERVAL": str(SWEEP_INTERVAL)}
VISIBILITY_TIMEOUT = JOB_TIMEOUT + VISIBILITY_MARGIN


class AppendOnlyRedis:
    """A redis-server with an append-only file, which the test may restart (shutdown, then start on the same
    files: what it had acknowledged comes back)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(self.port),
                        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--dir", str(self.folder)],
                       check=True, stdout=subprocess.DEVNULL)
        wait_until(self.answers, timeout=10, what="redis-server to start")

    def shutdown(self) -> None:
        Redis(port=self.port).shutdown()  # writes what the append-only file still lacks, then exits
        wait_until(lambda: not self.answers(), timeout=10, what="redis-server to stop")

    def restart(self) -> float:
        """Shut down and start again; when it answers again (time.monotonic())."""
        self.shutdown()
        self.start()
        return time.monotonic()

    def answers(self) -> bool:
        try:
            return bool(Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except Exception:
            return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[AppendOnlyRedis]:
    server = AppendOnlyRedis(tmp_path)
    server.start()
    yield server
    if server.answers():
        server.shutdown()


@pytest.fixture
def service(redis_server: AppendOnlyRedis, tmp_path: Path) -> Iterator[str]:
    """An API and a worker on the test's own Redis, with short timeouts and sweeps: the API's URL."""
    worker = start_worker(tmp_path / "worker.log", REDIS_URL=redis_server.url, **SETTINGS)
    api, url = start_api(tmp_path / "api.log", REDIS_URL=redis_server.url, **SETTINGS)
    yield url
    stop(api)
    stop(worker)


def uploads(radiographs: list[Path], count: int, prefix: str) -> list[tuple[str, bytes]]:
    return [(f"{prefix}-{n}.jpeg", radiographs[n % len(radiographs)].read_bytes()) for n in range(count)]


def restart_when(condition: Callable[[], bool], server: AppendOnlyRedis) -> float:
    wait_until(condition, timeout=60, interval=0.005, what="the moment to restart Redis")
    return server.restart()


def all_succeeded_exactly_once(store: JobStore, job_ids: list[str], worker_log: Path) -> None:
    jobs = store.get_jobs(job_ids)
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * len(job_ids)
    # The work done: each image ran through the model once, whatever the state machine says of it.
    assert forward_passes(worker_log) == len(job_ids)
    assert store.metrics()["jobs_succeeded"] == len(job_ids)


@pytest.mark.parametrize("moment", ["upload", "inference", "storing results"])
def test_a_redis_restart_loses_and_repeats_nothing(moment: str, service: str, redis_server: AppendOnlyRedis,
                                                    tmp_path: Path,
                                                    radiographs: list[Path]):
    store = JobStore(redis_server.url, ttl=3600)
    job_ids: list[str] = []
    with Client(service, max_retry_wait=120) as client:
        if moment == "upload":
            # Four requests of 16; Redis restarts after the first is in, while the others are being sent.
            first = client.submit(uploads(radiographs, 16, "chunk-0"), idempotency_key="restart-chunk-0")
            job_ids += [job["id"] for job in first.jobs]
            restarter = threading.Thread(target=redis_server.restart)
            restarter.start()
            for n in range(1, 4):
                submitted = client.submit(uploads(radiographs, 16, f"chunk-{n}"), idempotency_key=f"restart-{n}")
                job_ids += [job["id"] for job in submitted.jobs]
            restarter.join()
            back = time.monotonic()
        else:
            submitted = client.submit(uploads(radiographs, 64, "study"), idempotency_key="restart-study")
            job_ids = [job["id"] for job in submitted.jobs]
            if moment == "inference":
                started = lambda: JobStatus.RUNNING in {job.status for job in store.get_jobs(job_ids)}  # noqa: E731
            else:
                started = lambda: store.metrics().get("jobs_succeeded", 0) > 0  # noqa: E731
            back = restart_when(started, redis_server)
        assert len(job_ids) == 64

        wait_until(lambda: all(job.status.finished for job in store.get_jobs(job_ids)),
                   timeout=SWEEP_INTERVAL + VISIBILITY_TIMEOUT + 30, what="every job to finish after the restart")
        recovered = time.monotonic() - back
    all_succeeded_exactly_once(store, job_ids, tmp_path / "worker.log")
    # The bound the service promises: a sweep, or the broker handing the lost task out again.
    assert recovered <= SWEEP_INTERVAL + VISIBILITY_TIMEOUT, recovered
    store.close()


def test_expired_jobs_leave_the_books_and_the_queue_admits_again(tmp_path: Path, radiographs: list[Path]):
    url = "redis://127.0.0.1:6379/8"
    Redis.from_url(url).flushdb()
    api, api_url = start_api(tmp_path / "api.log", REDIS_URL=url, JOB_TTL="3", MAX_QUEUE="3",
                             SWEEP_INTERVAL="1")  # no worker: the jobs wait until they expire
    image = radiographs[0].read_bytes()
    try:
        with httpx.Client(base_url=api_url, timeout=30) as client:
            files = [("files", (f"{n}.jpeg", image)) for n in range(3)]
            assert client.post("/jobs", files=files).status_code == 202
            assert client.post("/jobs", files=files[:1]).status_code == 429

            # After the records expire, one sweep takes their ids out of the books.
            wait_until(lambda: client.post("/jobs", files=files[:1]).status_code == 202, timeout=3 + 2 * 1 + 2,
                       interval=0.25, what="MAX_QUEUE to admit again")
            metrics = client.get("/metrics").text
    finally:
        stop(api)
        Redis.from_url(url).flushdb()
    assert "pneuradnet_queue_depth 1.0" in metrics  # the one job really waiting
    assert "pneuradnet_jobs_running 0.0" in metrics


def test_an_api_that_dies_between_storing_and_enqueueing_strands_nothing(redis_server: AppendOnlyRedis,
                                                                       radiographs: list[Path], tmp_path: Path):
    doomed, doomed_url = start_api(tmp_path / "doomed.log", REDIS_URL=redis_server.url,
                                   **{FAULT_ENV: "api-dies-after-store"}, **SETTINGS)
    worker = start_worker(tmp_path / "worker.log", REDIS_URL=redis_server.url, **SETTINGS)
    store = JobStore(redis_server.url, ttl=3600)
    try:
        with httpx.Client(base_url=doomed_url, timeout=30) as client, pytest.raises(httpx.TransportError):
            client.post("/jobs", files=[("files", name_and_bytes) for name_and_bytes in
                                        uploads(radiographs, 8, "orphan")])
        assert doomed.wait(timeout=10) == DIED_EXIT_CODE
        died = time.monotonic()
        stored = store.queued_ids_for(0)
        assert len(stored) == 8, "the API died before it stored the batch: the test proves nothing"

        # No API is left: the worker's turn at the sweep finds the jobs no task names and dispatches them.
        wait_until(lambda: all(job.status.finished for job in store.get_jobs(stored)),
                   timeout=STRANDED_AFTER + 2 * SWEEP_INTERVAL + 30, what="the stranded jobs to run")
        ran_after = time.monotonic() - died
    finally:
        stop(worker)
        store.close()
    all_succeeded_exactly_once(JobStore(redis_server.url, ttl=3600), stored, tmp_path / "worker.log")
    # A sweep's turn comes within SWEEP_INTERVAL; the jobs must have waited STRANDED_AFTER; then they run.
    assert ran_after <= STRANDED_AFTER + 2 * SWEEP_INTERVAL + 10, ran_after
