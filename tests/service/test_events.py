"""Task events: Flower lists a live worker's finished tasks with their state and runtime and counts them in its
metrics; and sending events never waits on a broker that does not answer."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from service.events import PUBLISH_TIMEOUT, publisher_for
from service.queue import CLASSIFY_TASK, make_celery
from service.settings import Settings
from tests.live_service import LIVE_BULK_CHUNK, TEST_REDIS_URL
from tests.processes import ROOT, free_port, stop, wait_until

BULK_IMAGES = LIVE_BULK_CHUNK + 4
"""A bulk upload (more than INTERACTIVE_MAX_IMAGES) of two tasks: LIVE_BULK_CHUNK images, then 4."""
FLOWER_USER = "ops:flower-test-password"
"""Flower's API answers only with authentication (or FLOWER_UNAUTHENTICATED_API): basic auth, as in a deployment."""


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[httpx.Client]:
    """Flower 2.2 on the test broker, started the way the README says (no project code: the broker URL only); a
    client of it once it listens to the workers' events."""
    watcher = Redis.from_url(TEST_REDIS_URL)
    patterns_before = watcher.pubsub_numpat()
    port = free_port()
    log_path = tmp_path / "flower.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", f"--broker={TEST_REDIS_URL}", "flower", f"--port={port}",
             "--address=127.0.0.1", f"--basic-auth={FLOWER_USER}"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    user, password = FLOWER_USER.split(":")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(user, password), timeout=10) as client:
            def listening() -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"Flower exited:\n{log_path.read_text()[-3000:]}")
                # Events on Redis are a pattern subscription: Flower's is there once the count grows.
                return watcher.pubsub_numpat() > patterns_before
            wait_until(listening, timeout=60, what="Flower to subscribe to the events")
            yield client
    finally:
        stop(process)
        watcher.close()


@pytest.mark.model
def test_flower_lists_the_tasks_of_a_bulk_upload_with_their_state_and_runtime_and_counts_them(
        flower: httpx.Client, client: httpx.Client, radiographs: list[Path]):
    images = [radiographs[n % len(radiographs)] for n in range(BULK_IMAGES)]
    files = [("files", (f"{n}-{path.name}", path.read_bytes())) for n, path in enumerate(images)]
    submission = client.post("/jobs", files=files).json()
    assert submission["lane"] == "bulk"
    job_ids = {job["id"] for job in submission["jobs"]}
    batch = client.get(f"/batches/{submission['batch_id']}", params={"wait": 30}).json()
    assert batch["counts"]["succeeded"] == BULK_IMAGES

    def our_tasks() -> list[dict]:
        tasks = flower.get("/api/tasks", params={"taskname": CLASSIFY_TASK}).json().values()
        return [task for task in tasks if any(job_id in (task["args"] or "") for job_id in job_ids)]

    wait_until(lambda: len(our_tasks()) >= 2 and all(task["state"] == "SUCCESS" for task in our_tasks()),
               timeout=10, what="Flower to list the upload's tasks as succeeded")
    tasks = our_tasks()
    # Every job of the upload is in the arguments of exactly one task Flower lists.
    assert sorted(job_id for task in tasks for job_id in job_ids if job_id in task["args"]) == sorted(job_ids)
    for task in tasks:
        assert task["name"] == CLASSIFY_TASK and task["worker"].startswith("local-")
        assert 0 < task["runtime"] < 30
        assert task["received"] <= task["started"] <= task["succeeded"]

    worker = tasks[0]["worker"]
    metrics = {(sample.name, sample.labels.get("type")): sample.value
               for family in text_string_to_metric_families(flower.get("/metrics").text)
               for sample in family.samples
               if sample.labels.get("worker") == worker and sample.labels.get("task") == CLASSIFY_TASK}
    for event in ("task-received", "task-started", "task-succeeded"):
        assert metrics[("flower_events_total", event)] >= len(tasks)
    assert metrics[("flower_task_runtime_seconds_count", None)] >= len(tasks)


def test_sending_events_never_waits_for_a_broker_that_does_not_answer():
    # A broker that accepts connections and never answers: a partition's silence, without root.
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        app = make_celery(Settings(redis_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0", task_events=True))
        dispatcher = app.events.Dispatcher(app.connection_for_write(), hostname="test@silent",
                                           buffer_group=["task"], buffer_limit=1)
        publisher = publisher_for(app)
        dropped_before = publisher.dropped_total

        started = time.monotonic()
        for number in range(200):
            dispatcher.send("task-succeeded", uuid=f"task-{number}", runtime=0.1)
        took = time.monotonic() - started

        assert took < 0.5, f"sending 200 events to a silent broker held the caller {took:.1f} s"
        wait_until(lambda: publisher.dropped_total - dropped_before == 200, timeout=15 * PUBLISH_TIMEOUT,
                   what="the events the silent broker never took to be dropped and counted")
    finally:
        silent.close()
