"""Faults with real processes: killed workers, a poison job, a job past JOB_TIMEOUT, Redis going away.

Each test runs its own worker processes on a Redis database of its own, so that the session's worker does
not take (or restore) their tasks.
"""

import io
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from redis import Redis

from service.jobstore import Job, JobStatus, JobStore, Upload
from service.queue import make_celery, send_classify_task
from service.settings import Settings
from tests.live_service import start_api, start_worker
from tests.processes import forward_passes, free_port, stop, task_runs, wait_until

pytestmark = pytest.mark.model

FAULTS_REDIS_URL = "redis://127.0.0.1:6379/14"


@pytest.fixture
def faults_store() -> Iterator[JobStore]:
    Redis.from_url(FAULTS_REDIS_URL).flushdb()
    store = JobStore(FAULTS_REDIS_URL, ttl=600)
    yield store
    store.close()
    Redis.from_url(FAULTS_REDIS_URL).flushdb()


def enqueue(job_ids: list[str], redis_url: str = FAULTS_REDIS_URL) -> None:
    send_classify_task(job_ids, app=make_celery(Settings(redis_url=redis_url)))


def submit(store: JobStore, uploads: list[Upload]) -> list[Job]:
    _, jobs, _ = store.create_batch(uploads)
    enqueue([job.id for job in jobs])
    return jobs


def statuses(store: JobStore, jobs: list[Job]) -> list[JobStatus]:
    return [job.status for job in store.get_jobs([job.id for job in jobs])]


def kill_all(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(
        faults_store: JobStore, radiographs: list[Path], tmp_path: Path):
    settings = {"REDIS_URL": FAULTS_REDIS_URL, "JOB_TIMEOUT": "5"}  # redelivery after 5 + 30 s
    first = start_worker(tmp_path / "first.log", **settings)
    finished_events = Redis.from_url(FAULTS_REDIS_URL, decode_responses=True).pubsub(ignore_subscribe_messages=True)
    finished_events.psubscribe("pneuradnet:job:*:events")
    jobs = submit(faults_store, [Upload(path.name, path.read_bytes()) for path in radiographs])

    wait_until(lambda: JobStatus.RUNNING in statuses(faults_store, jobs), timeout=30, interval=0.01,
               what="the worker to start the batch")
    kill_all(first)
    assert JobStatus.RUNNING in statuses(faults_store, jobs), "the batch ended before the kill"

    second = start_worker(tmp_path / "second.log", **settings)
    try:
        wait_until(lambda: all(s is JobStatus.SUCCEEDED for s in statuses(faults_store, jobs)), timeout=120,
                   what="the batch to be redelivered and to finish")
    finally:
        stop(second)

    events, quiet_since = [], time.monotonic()
    while time.monotonic() - quiet_since < 1:  # get_message answers None for confirmations too: read till quiet
        if message := finished_events.get_message(timeout=0.1):
            events.append((message["channel"], message["data"]))
            quiet_since = time.monotonic()
    for job in jobs:
        assert events.count((f"pneuradnet:job:{job.id}:events", "succeeded")) == 1
    assert all(job.deliveries == 2 for job in faults_store.get_jobs([job.id for job in jobs]))
    assert faults_store.running_count() == 0
    # The work done: the killed process may have run its forward pass; the chunk ran once more, not twice.
    assert forward_passes(tmp_path / "first.log") <= 16
    assert forward_passes(tmp_path / "second.log") == 16 and task_runs(tmp_path / "second.log") == 1


def test_a_job_that_kills_its_worker_every_time_fails_after_max_deliveries(
        faults_store: JobStore, radiographs: list[Path], tmp_path: Path):
    worker = start_worker(tmp_path / "worker.log", REDIS_URL=FAULTS_REDIS_URL, MAX_DELIVERIES="2")
    try:
        (job,) = submit(faults_store, [Upload("poison.jpeg", radiographs[0].read_bytes())])
        for delivery in (1, 2):
            # Whatever in this image kills the model process, it does so each time the image is taken.
            wait_until(lambda d=delivery: (j := faults_store.get_job(job.id)).status is JobStatus.RUNNING
                       and j.deliveries == d, timeout=60, interval=0.01, what=f"delivery {delivery}")
            os.kill(int(faults_store.get_job(job.id).worker.rsplit(":", 1)[1]), signal.SIGKILL)

        wait_until(lambda: faults_store.get_job(job.id).status.finished, timeout=90, what="the job to fail")
    finally:
        stop(worker)

    failed = faults_store.get_job(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error["type"] == "urn:pneuradnet:problem:worker-lost"
    assert "stopped 2 times" in failed.error["detail"]


def large_png(seed: int) -> bytes:
    """A 7000 x 7000 colour PNG: about 0.4 s to decode (a PNG has no reduced decoding, as a JPEG's draft mode is), so
    a chunk of 16 takes a few seconds on any machine."""
    gradient = Image.linear_gradient("L").resize((7000, 7000)).rotate(seed)
    buffer = io.BytesIO()
    Image.merge("RGB", (gradient, gradient.rotate(90), gradient.rotate(180))).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def test_a_task_past_job_timeout_fails_its_jobs_with_that_reason(faults_store: JobStore, tmp_path: Path):
    worker = start_worker(tmp_path / "worker.log", REDIS_URL=FAULTS_REDIS_URL, JOB_TIMEOUT="1")
    try:
        jobs = submit(faults_store, [Upload(f"large-{n}.png", large_png(n)) for n in range(16)])
        wait_until(lambda: all(s.finished for s in statuses(faults_store, jobs)), timeout=60,
                   what="the jobs to finish")
    finally:
        stop(worker)

    finished = faults_store.get_jobs([job.id for job in jobs])
    timed_out = [job for job in finished if job.status is JobStatus.FAILED]
    assert timed_out, "every large image was decoded within a second: the test proves nothing"
    for job in timed_out:
        assert job.error["type"] == "urn:pneuradnet:problem:job-timeout"
        assert job.error["detail"] == "the job ran longer than JOB_TIMEOUT (1 s)"
    assert faults_store.running_count() == 0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, callable, callable]]:
    """A Redis of the test's own, which the test may stop and start again on the same port."""
    port = free_port()

    def start() -> None:
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port),
                        "--save", "", "--appendonly", "no", "--dir", str(tmp_path)], check=True)
        wait_until(lambda: _answers(port), timeout=10, what="redis-server to start")

    def halt() -> None:
        Redis(port=port).shutdown(nosave=True)
        wait_until(lambda: not _answers(port), timeout=10, what="redis-server to stop")

    start()
    yield f"redis://127.0.0.1:{port}/0", start, halt
    if _answers(port):
        halt()


def _answers(port: int) -> bool:
    try:
        return Redis(port=port, socket_connect_timeout=0.5).ping()
    except Exception:
        return False


def test_the_api_answers_503_while_redis_is_away_and_everything_recovers(
        own_redis: tuple[str, callable, callable], radiographs: list[Path], tmp_path: Path):
    url, start_redis, stop_redis = own_redis
    api, api_url = start_api(tmp_path / "api.log", REDIS_URL=url)
    worker = start_worker(tmp_path / "worker.log", REDIS_URL=url)
    unknown = "/jobs/00000000-0000-4000-8000-000000000000"
    image = {"files": (radiographs[0].name, radiographs[0].read_bytes())}
    try:
        with httpx.Client(base_url=api_url, timeout=30) as client:
            wait_until(lambda: client.get("/readyz").status_code == 200, timeout=30, what="readiness")
            stop_redis()

            for answer in (client.get(unknown), client.post("/jobs", files=image), client.get("/readyz")):
                assert answer.status_code == 503
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.headers["retry-after"] == "5"
                assert "Redis" in answer.json()["detail"]

            start_redis()
            assert client.get(unknown).status_code == 404
            wait_until(lambda: client.get("/readyz").status_code == 200, timeout=60,
                       what="the worker to announce itself again")
            (job,) = client.post("/jobs", files=image).json()["jobs"]
            assert client.get(f"/jobs/{job['id']}", params={"wait": 30}).json()["status"] == "succeeded"
    finally:
        stop(worker)
        stop(api)


def test_a_worker_stopped_with_sigterm_finishes_or_returns_its_batch(
        faults_store: JobStore, radiographs: list[Path], tmp_path: Path):
    first = start_worker(tmp_path / "first.log", REDIS_URL=FAULTS_REDIS_URL)
    images = [Upload(path.name, path.read_bytes()) for path in radiographs]
    held, waiting = submit(faults_store, images), submit(faults_store, images)

    wait_until(lambda: JobStatus.RUNNING in statuses(faults_store, held), timeout=30, interval=0.01,
               what="the worker to start the first batch")
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=60)

    assert all(status is JobStatus.SUCCEEDED for status in statuses(faults_store, held))
    assert all(status is JobStatus.QUEUED for status in statuses(faults_store, waiting))
    second = start_worker(tmp_path / "second.log", REDIS_URL=FAULTS_REDIS_URL)
    try:
        wait_until(lambda: all(s is JobStatus.SUCCEEDED for s in statuses(faults_store, waiting)), timeout=60,
                   what="the second worker to take the returned batch")
    finally:
        stop(second)
    assert all(job.deliveries == 1 for job in faults_store.get_jobs([job.id for job in held + waiting]))


def test_readiness_follows_the_only_worker(faults_store: JobStore, tmp_path: Path):
    api, api_url = start_api(tmp_path / "api.log", REDIS_URL=FAULTS_REDIS_URL)
    try:
        with httpx.Client(base_url=api_url, timeout=30) as client:
            assert client.get("/readyz").status_code == 503
            worker = start_worker(tmp_path / "worker.log", REDIS_URL=FAULTS_REDIS_URL)
            wait_until(lambda: client.get("/readyz").status_code == 200, timeout=30, what="readiness")

            stop(worker)
            answer = client.get("/readyz")
            assert answer.status_code == 503
            assert answer.json()["detail"] == "no worker is alive with a loaded model: jobs would wait"

            worker = start_worker(tmp_path / "worker-again.log", REDIS_URL=FAULTS_REDIS_URL)
            wait_until(lambda: client.get("/readyz").status_code == 200, timeout=30, what="readiness again")
            stop(worker)
    finally:
        stop(api)
