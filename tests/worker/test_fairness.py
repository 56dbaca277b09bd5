"""A shared service stays fair, with real processes: a clinician's single image does not wait behind a research
team's bulk upload, keys with bulk work take turns, and a worker killed in the middle loses and repeats nothing.

Each test runs on a Redis database of its own with its own API (two API keys) and worker, so that the session's
worker takes none of its tasks. Bounds come from times measured in the same test, never from wall-clock constants.
"""

import os
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from service.jobstore import JobStatus, JobStore
from service.queue import RESTORE_INTERVAL, VISIBILITY_MARGIN
from tests.live_service import start_api, start_worker
from tests.processes import forward_passes, stop, task_runs, wait_until

pytestmark = pytest.mark.model

FAIR_REDIS_URL = "redis://127.0.0.1:6379/13"
KILL_REDIS_URL = "redis://127.0.0.1:6379/11"
ALICE = "research-team-key-0123"
BOB = "clinician-key-4567"


def flush(url: str) -> None:
    redis = Redis.from_url(url)
    redis.flushdb()
    redis.close()


def client_of(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One API (keys ALICE and BOB) and one worker on a database of their own: the API's URL."""
    flush(FAIR_REDIS_URL)
    logs = tmp_path_factory.mktemp("fair")
    worker = start_worker(logs / "worker.log", REDIS_URL=FAIR_REDIS_URL)
    api, url = start_api(logs / "api.log", REDIS_URL=FAIR_REDIS_URL, API_KEYS=f"{ALICE},{BOB}")
    yield url
    stop(api)
    stop(worker)
    flush(FAIR_REDIS_URL)


def files(radiographs: list[Path], count: int, prefix: str) -> list[tuple[str, tuple[str, bytes]]]:
    contents = [path.read_bytes() for path in radiographs]
    return [("files", (f"{prefix}-{n}.jpeg", contents[n % len(contents)])) for n in range(count)]


FINISHED = ("succeeded", "failed", "canceled")


def wait_for_batch(client: httpx.Client, batch_id: str, *, polls: int = 20) -> dict:
    """The batch once every job of it has finished: long-polls of at most 30 s each, `polls` of them at most."""
    for _ in range(polls):
        batch = client.get(f"/batches/{batch_id}", params={"wait": 30, "page_size": 1}).json()
        if sum(batch["counts"][status] for status in FINISHED) >= batch["total"]:
            return batch
    raise AssertionError(f"batch {batch_id} did not finish: {batch['counts']}")


def all_jobs(client: httpx.Client, batch_id: str) -> list[dict]:
    return client.get(f"/batches/{batch_id}", params={"page_size": 1000}).json()["jobs"]


def timed_batch(client: httpx.Client, upload: list, **params: str) -> tuple[float, dict]:
    """Seconds from the request's start until every job of its batch has finished, and the batch."""
    started = time.perf_counter()
    submitted = client.post("/jobs", files=upload, params=params)
    assert submitted.status_code == 202, submitted.text
    batch = wait_for_batch(client, submitted.json()["batch_id"])
    return time.perf_counter() - started, batch


def wait_until_running(client: httpx.Client, batch_id: str) -> None:
    wait_until(lambda: client.get(f"/batches/{batch_id}", params={"page_size": 1}).json()["counts"]["running"] > 0,
               timeout=60, interval=0.02, what="the bulk upload to start")


def test_a_single_urgent_image_waits_at_most_for_the_batch_already_running(service: str, radiographs: list[Path]):
    with client_of(service, ALICE) as alice, client_of(service, BOB) as bob:
        image = {"file": (radiographs[0].name, radiographs[0].read_bytes())}
        alone = []
        for _ in range(3):
            started = time.perf_counter()
            assert bob.post("/predict/", files=image).status_code == 200
            alone.append(time.perf_counter() - started)
        single = statistics.median(alone)
        batch_time = statistics.median(timed_batch(bob, files(radiographs, 16, "warm"), priority="bulk")[0]
                                       for _ in range(3))

        bulk = alice.post("/jobs", files=files(radiographs, 320, "study"))
        assert bulk.status_code == 202 and bulk.json()["lane"] == "bulk"
        wait_until_running(alice, bulk.json()["batch_id"])
        waits = []
        for _ in range(3):
            started = time.perf_counter()
            answer = bob.post("/predict/", files=image)
            waits.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
        behind_bulk = statistics.median(waits)

        # Each urgent image comes just after the one before finished, when the worker has just taken the next bulk
        # chunk: the worst case, every time. It waits for that chunk, then runs alone. One chunk's time varies by up
        # to half from the next on a shared machine, hence the bound of 1.5 chunks; waiting behind the queue would
        # be 20 chunks.
        assert behind_bulk <= 1.5 * batch_time + single, (waits, batch_time, single)
        assert alice.get(f"/batches/{bulk.json()['batch_id']}", params={"page_size": 1}).json()["counts"][
            "queued"] > 0, "the bulk upload was over before the urgent images came: the test proves nothing"
        done = wait_for_batch(alice, bulk.json()["batch_id"])
        assert done["counts"]["succeeded"] == 320
        assert alice.get(f"/batches/{bulk.json()['batch_id']}").json()["lane"] == "bulk"


def test_keys_with_bulk_work_take_turns(service: str, radiographs: list[Path]):
    store = JobStore(FAIR_REDIS_URL, ttl=600)
    with client_of(service, ALICE) as alice, client_of(service, BOB) as bob:
        alone, _ = timed_batch(bob, files(radiographs, 48, "alone"))
        succeeded_before = store.metrics().get("jobs_succeeded", 0)

        large = alice.post("/jobs", files=files(radiographs, 480, "archive"))
        wait_until_running(alice, large.json()["batch_id"])
        shared, small = timed_batch(bob, files(radiographs, 48, "study"))
        large_done = wait_for_batch(alice, large.json()["batch_id"])

        # First in, first out, Bob's 48 would wait for Alice's 480: about 10 times as long as alone.
        assert shared <= 3 * alone, (shared, alone)
        assert small["counts"]["succeeded"] == 48 and large_done["counts"]["succeeded"] == 480
        assert store.metrics()["jobs_succeeded"] - succeeded_before == 528  # each job succeeded exactly once
        ids = [job["id"] for job in [*all_jobs(bob, small["id"]), *all_jobs(alice, large_done["id"])]]
        assert all(job.deliveries == 1 for job in store.get_jobs(ids))
    store.close()


def test_a_worker_killed_mid_bulk_costs_at_most_its_chunk_and_leaves_the_key_moving(
        radiographs: list[Path], tmp_path: Path):
    """Two workers share a 320-image bulk, in 5 chunks of 4 forward passes; one is SIGKILLed in the middle. Its
    chunk comes back once (the broker's visibility timeout), the model redoes at most the pass it was running (each
    pass's results are stored as it ends), and the key's next bulk, sent after the timeout, finds no stale copy of a
    task and no place of its window lost: exactly its own work."""
    flush(KILL_REDIS_URL)
    settings = {"REDIS_URL": KILL_REDIS_URL, "JOB_TIMEOUT": "5", "WORKER_THREADS": "1",  # redelivery after 5 + 30 s
                "MAX_BATCH": "16", "BULK_CHUNK": "64"}
    logs = [tmp_path / "doomed.log", tmp_path / "survivor.log"]
    doomed, survivor = (start_worker(log, **settings) for log in logs)
    api, url = start_api(tmp_path / "api.log", API_KEYS=f"{ALICE},{BOB}", **settings)
    store = JobStore(KILL_REDIS_URL, ttl=600)
    try:
        with client_of(url, ALICE) as alice:
            first = alice.post("/jobs", files=files(radiographs, 320, "first")).json()["batch_id"]
            wait_until(lambda: forward_passes(logs[0]) >= 32, timeout=120, interval=0.05,
                       what="the doomed worker to be in the middle of the bulk")
            os.killpg(doomed.pid, signal.SIGKILL)
            doomed.wait()
            killed_at = time.monotonic()
            assert wait_for_batch(alice, first)["counts"]["succeeded"] == 320
            first_passes, first_runs = forward_passes(*logs), task_runs(*logs)

            wait_until(lambda: time.monotonic() - killed_at > 5 + VISIBILITY_MARGIN + RESTORE_INTERVAL, timeout=60,
                       what="the visibility timeout to pass")
            second = alice.post("/jobs", files=files(radiographs, 320, "second")).json()["batch_id"]
            assert wait_for_batch(alice, second)["counts"]["succeeded"] == 320
            second_passes, second_runs = forward_passes(*logs) - first_passes, task_runs(*logs) - first_runs
            jobs = [job["id"] for batch_id in (first, second) for job in all_jobs(alice, batch_id)]
    finally:
        for process in (survivor, api):
            stop(process)

    assert 320 <= first_passes <= 320 + 16, first_passes  # at most the pass the killed process was running, again
    assert first_runs <= 5 + 1, first_runs  # 5 chunks, and the killed one handed out once more
    assert (second_passes, second_runs) == (320, 5)
    assert store.metrics()["jobs_succeeded"] == 640  # the state machine's own count, for what it is worth
    assert all(job.status is JobStatus.SUCCEEDED for job in store.get_jobs(jobs))
    assert store.running_count() == 0 and store.queued_count() == 0
    store.close()
    flush(KILL_REDIS_URL)
