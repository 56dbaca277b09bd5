"""Idempotency-Key: a retried upload gets its first batch back and is not enqueued twice; the same key with
other files is refused."""

import httpx
from redis import Redis

from service.jobstore import JobStore
from tests.api.routes.support import assert_problem, enqueued_job_ids, enqueued_tasks, images, png


async def test_a_repeated_upload_returns_the_first_batch_and_is_enqueued_once(api: httpx.AsyncClient,
                                                                              redis_db: Redis, store: JobStore):
    headers = {"Idempotency-Key": "study-42-upload-1"}

    first = await api.post("/jobs", files=images("a.png", "b.png"), headers=headers)
    again = await api.post("/jobs", files=images("a.png", "b.png"), headers=headers)

    assert first.status_code == again.status_code == 202
    assert again.json()["batch_id"] == first.json()["batch_id"]
    assert [job["id"] for job in again.json()["jobs"]] == [job["id"] for job in first.json()["jobs"]]
    assert enqueued_job_ids(redis_db) == [job["id"] for job in first.json()["jobs"]]
    assert store.queued_count() == 2


async def test_the_same_key_with_other_files_is_refused(api: httpx.AsyncClient, redis_db: Redis, store: JobStore):
    headers = {"Idempotency-Key": "study-42-upload-1"}
    first = await api.post("/jobs", files=images("a.png", "b.png"), headers=headers)
    tasks_before = enqueued_tasks(redis_db)

    other_names = await api.post("/jobs", files=images("a.png", "c.png"), headers=headers)
    other_bytes = await api.post("/jobs", files=[("files", ("a.png", png(0), "image/png")),
                                                 ("files", ("b.png", png(99), "image/png"))], headers=headers)
    fewer = await api.post("/jobs", files=images("a.png"), headers=headers)

    for answer in (other_names, other_bytes, fewer):
        assert "study-42-upload-1" in assert_problem(answer, 422, "idempotency-conflict")["detail"]
    assert enqueued_tasks(redis_db) == tasks_before
    assert store.queued_count() == 2
    assert [key.decode() for key in redis_db.scan_iter("pneuradnet:batch:*:jobs")] == [
        f"pneuradnet:batch:{first.json()['batch_id']}:jobs"]


async def test_another_key_with_the_same_files_is_a_new_batch(api: httpx.AsyncClient, redis_db: Redis):
    first = await api.post("/jobs", files=images("a.png"), headers={"Idempotency-Key": "upload-1"})
    second = await api.post("/jobs", files=images("a.png"), headers={"Idempotency-Key": "upload-2"})

    assert second.json()["batch_id"] != first.json()["batch_id"]
    assert enqueued_job_ids(redis_db) == [first.json()["jobs"][0]["id"], second.json()["jobs"][0]["id"]]
