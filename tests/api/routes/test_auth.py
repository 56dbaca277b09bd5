"""API_KEYS: without a valid key nothing but the health check answers, and a key sees only its own jobs and
batches: another key's id is as unknown as an id that never existed."""

import uuid

import httpx
import pytest
from redis import Redis

from service.jobstore import JobStatus, JobStore
from tests.api.routes.support import Serve, assert_problem, bearer, enqueued_job_ids, enqueued_tasks, images

ALICE = "alice-key-0123456789"
BOB = "bob-key-9876543210"


@pytest.fixture
async def keyed_api(serve: Serve) -> httpx.AsyncClient:
    return await serve(api_keys=f"{ALICE}, {BOB}")


@pytest.mark.parametrize("headers", [
    {},
    bearer("not-a-key"),
    bearer(ALICE[:-1]),
    {"Authorization": ALICE},                 # no scheme
    {"Authorization": f"Basic {ALICE}"},
    {"Authorization": "Bearer "},
], ids=["none", "unknown", "prefix-of-a-key", "no-scheme", "basic", "empty"])
async def test_a_request_without_a_valid_key_is_refused(keyed_api: httpx.AsyncClient, redis_db: Redis,
                                                        store: JobStore, headers: dict[str, str]):
    some_id = uuid.uuid4()
    answers = [
        await keyed_api.post("/jobs", files=images("a.png"), headers=headers),
        await keyed_api.get(f"/jobs/{some_id}", headers=headers),
        await keyed_api.get(f"/batches/{some_id}", headers=headers),
        await keyed_api.delete(f"/jobs/{some_id}", headers=headers),
    ]

    for answer in answers:
        assert_problem(answer, 401, "unauthorized")
        assert answer.headers["www-authenticate"] == "Bearer"
    assert store.queued_count() == 0
    assert enqueued_tasks(redis_db) == []


async def test_the_health_check_needs_no_key(keyed_api: httpx.AsyncClient):
    answer = await keyed_api.get("/healthz")

    assert answer.status_code == 200


async def test_a_key_sees_its_own_jobs_and_batches(keyed_api: httpx.AsyncClient, redis_db: Redis):
    submitted = await keyed_api.post("/jobs", files=images("a.png", "b.png"), headers=bearer(ALICE))
    assert submitted.status_code == 202
    batch_id, jobs = submitted.json()["batch_id"], submitted.json()["jobs"]

    job = await keyed_api.get(f"/jobs/{jobs[0]['id']}", headers=bearer(ALICE))
    batch = await keyed_api.get(f"/batches/{batch_id}", headers=bearer(ALICE))

    assert job.status_code == 200 and job.json()["filename"] == "a.png"
    assert batch.status_code == 200 and [j["id"] for j in batch.json()["jobs"]] == [j["id"] for j in jobs]
    assert enqueued_job_ids(redis_db) == [j["id"] for j in jobs]


async def test_another_keys_jobs_and_batches_answer_as_unknown_ones(keyed_api: httpx.AsyncClient, store: JobStore):
    submitted = (await keyed_api.post("/jobs", files=images("a.png"), headers=bearer(ALICE))).json()
    batch_id, job_id = submitted["batch_id"], submitted["jobs"][0]["id"]
    unknown = str(uuid.uuid4())

    for method, path, kind in [
        ("GET", "/jobs/{}", "job-not-found"),
        ("DELETE", "/jobs/{}", "job-not-found"),
        ("GET", "/jobs/{}/heatmap.png", "job-not-found"),
        ("GET", "/batches/{}", "batch-not-found"),
        ("GET", "/batches/{}?format=csv", "batch-not-found"),
        ("DELETE", "/batches/{}", "batch-not-found"),
    ]:
        own_id = job_id if path.startswith("/jobs") else batch_id
        others = await keyed_api.request(method, path.format(own_id), headers=bearer(BOB))
        missing = await keyed_api.request(method, path.format(unknown), headers=bearer(BOB))

        other_problem = assert_problem(others, 404, kind)
        missing_problem = assert_problem(missing, 404, kind)
        assert other_problem["detail"] == missing_problem["detail"].replace(unknown, own_id), (method, path)

    # Bob's cancel attempts changed nothing: Alice's job still waits for its worker.
    assert store.get_job(job_id).status is JobStatus.QUEUED
    assert (await keyed_api.get(f"/jobs/{job_id}", headers=bearer(ALICE))).json()["status"] == "queued"


async def test_an_idempotency_key_used_by_another_key_does_not_reveal_its_batch(keyed_api: httpx.AsyncClient,
                                                                                redis_db: Redis):
    files = images("a.png")
    headers = {"Idempotency-Key": "study-42"}

    alices = await keyed_api.post("/jobs", files=files, headers=bearer(ALICE) | headers)
    bobs = await keyed_api.post("/jobs", files=files, headers=bearer(BOB) | headers)

    assert alices.status_code == bobs.status_code == 202
    assert bobs.json()["batch_id"] != alices.json()["batch_id"]
    assert enqueued_job_ids(redis_db) == [alices.json()["jobs"][0]["id"], bobs.json()["jobs"][0]["id"]]
