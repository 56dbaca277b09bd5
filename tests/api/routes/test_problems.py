"""Every refusal is an RFC 9457 problem (application/problem+json with type, title, status and detail), and a
refused request leaves nothing behind."""

import time
import uuid

import httpx
import pytest
from redis import Redis

from service.jobstore import JobStore
from tests.api.routes.support import Serve, assert_problem, enqueued_tasks, images, stored_keys


async def test_an_unknown_job_or_batch_is_a_404_problem(api: httpx.AsyncClient):
    unknown = str(uuid.uuid4())

    job = assert_problem(await api.get(f"/jobs/{unknown}"), 404, "job-not-found")
    batch = assert_problem(await api.get(f"/batches/{unknown}"), 404, "batch-not-found")

    assert unknown in job["detail"] and unknown in batch["detail"]


async def test_an_unknown_route_is_a_404_problem(api: httpx.AsyncClient):
    assert_problem(await api.get("/no-such-route"), 404, "not-found")


@pytest.mark.parametrize(("path", "named"), [
    ("/jobs/not-a-uuid", "job_id"),
    ("/batches/not-a-uuid", "batch_id"),
    (f"/jobs/{uuid.uuid4()}?wait=31", "wait"),
    (f"/jobs/{uuid.uuid4()}?wait=-1", "wait"),
    (f"/batches/{uuid.uuid4()}?wait=30.5", "wait"),
    (f"/batches/{uuid.uuid4()}?page_size=0", "page_size"),
    (f"/batches/{uuid.uuid4()}?page_size=1001", "page_size"),
    (f"/batches/{uuid.uuid4()}?page_token=-3", "page_token"),
    (f"/batches/{uuid.uuid4()}?format=xlsx", "format"),
])
async def test_a_malformed_id_or_parameter_is_a_422_problem_naming_it(api: httpx.AsyncClient, path: str,
                                                                      named: str):
    started = time.monotonic()

    body = assert_problem(await api.get(path), 422, "invalid-request")

    assert named in body["detail"]
    assert time.monotonic() - started < 5  # a refused wait is not waited


async def test_a_body_over_the_upload_limit_is_a_413_problem(serve: Serve, redis_db: Redis, store: JobStore):
    api = await serve(max_upload_bytes=64 * 1024)

    answer = await api.post("/jobs", files={"files": ("big.png", b"\x89PNG" + b"\0" * (80 * 1024), "image/png")})

    body = assert_problem(answer, 413, "upload-too-large")
    assert "65,536" in body["detail"]
    assert stored_keys(redis_db) == [] and enqueued_tasks(redis_db) == []


async def test_a_full_queue_is_a_429_problem_and_nothing_is_enqueued(serve: Serve, redis_db: Redis,
                                                                     store: JobStore):
    api = await serve(max_queue=3)
    accepted = await api.post("/jobs", files=images("a.png", "b.png"))
    assert accepted.status_code == 202
    tasks_before = enqueued_tasks(redis_db)

    answer = await api.post("/jobs", files=images("c.png", "d.png"))

    body = assert_problem(answer, 429, "queue-full")
    assert "MAX_QUEUE" in body["detail"]
    assert int(answer.headers["retry-after"]) > 0
    assert enqueued_tasks(redis_db) == tasks_before
    assert store.queued_count() == 2
    assert len(list(redis_db.scan_iter("pneuradnet:batch:*:jobs"))) == 1
    # Within the limit, the queue takes more.
    assert (await api.post("/jobs", files=images("c.png"))).status_code == 202


async def test_canceling_a_job_that_has_started_is_a_409_problem(api: httpx.AsyncClient, redis_db: Redis,
                                                                 store: JobStore):
    jobs = (await api.post("/jobs", files=images("running.png", "queued.png"))).json()["jobs"]
    running_id, queued_id = jobs[0]["id"], jobs[1]["id"]
    store.claim([running_id], token="run-1", lease=60)  # as a worker takes it

    refused = await api.delete(f"/jobs/{running_id}")
    canceled = await api.delete(f"/jobs/{queued_id}")
    again = await api.delete(f"/jobs/{queued_id}")

    assert "running" in assert_problem(refused, 409, "not-cancelable")["detail"]
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert "canceled" in assert_problem(again, 409, "not-cancelable")["detail"]
    assert (await api.get(f"/jobs/{running_id}")).json()["status"] == "running"


async def test_canceling_a_batch_cancels_only_its_queued_jobs(api: httpx.AsyncClient, store: JobStore):
    submitted = (await api.post("/jobs", files=images("a.png", "b.png", "c.png"))).json()
    store.claim([submitted["jobs"][0]["id"]], token="run-1", lease=60)

    answer = await api.delete(f"/batches/{submitted['batch_id']}")

    assert answer.status_code == 200 and answer.json()["canceled"] == 2
    batch = (await api.get(f"/batches/{submitted['batch_id']}")).json()
    assert [job["status"] for job in batch["jobs"]] == ["running", "canceled", "canceled"]
    assert batch["counts"]["canceled"] == 2 and batch["counts"]["running"] == 1
