"""Streaming admission: a request is planned from its archives' directories and refused whole before any job
exists when it breaks a limit; its images are then stored and enqueued a chunk at a time, and a member that turns
out unreadable fails its own job only."""

import io
import zipfile

import httpx
import pytest
from redis import Redis

from service.jobstore import JobStore, QueueFull
from tests.api.routes.support import ROUTE_SETTINGS, Serve, assert_problem, enqueued_tasks, png, zip_of

MAX_BATCH = ROUTE_SETTINGS["max_batch"]


def with_corrupt_member(archive: bytes, member: str) -> bytes:
    """The archive with one byte of a stored member's data changed: its directory, and so its plan, still hold."""
    with zipfile.ZipFile(io.BytesIO(archive)) as reading:
        info = reading.getinfo(member)
    data = bytearray(archive)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 10] ^= 0xFF
    return bytes(data)


async def test_an_unreadable_member_fails_its_own_job_and_the_others_are_queued(api: httpx.AsyncClient,
                                                                              redis_db: Redis, store: JobStore):
    members = {f"study/{n}.png": png(n) for n in range(6)}
    archive = with_corrupt_member(zip_of(members), "study/3.png")

    answer = await api.post("/jobs", files={"files": ("study.zip", archive, "application/zip")})

    assert answer.status_code == 202, answer.text
    jobs = answer.json()["jobs"]
    assert [job["filename"] for job in jobs] == list(members)
    broken = jobs[3]
    assert broken["status"] == "failed" and broken["error"]["type"] == "urn:pneuradnet:problem:invalid-zip-member"
    assert "study/3.png" in broken["error"]["detail"] and "study.zip" in broken["error"]["detail"]
    queued = [job["id"] for job in jobs if job["status"] == "queued"]
    assert len(queued) == 5 and [job_id for task in enqueued_tasks(redis_db) for job_id in task] == queued
    batch = (await api.get(f"/batches/{answer.json()['batch_id']}")).json()
    assert batch["counts"]["failed"] == 1 and batch["counts"]["queued"] == 5 and batch["total"] == 6
    metrics = (await api.get("/metrics")).text
    assert 'pneuradnet_job_failures_total{reason="invalid-zip-member"} 1.0' in metrics


async def test_a_large_upload_is_stored_and_enqueued_a_chunk_at_a_time(api: httpx.AsyncClient, redis_db: Redis):
    members = {f"{n}.png": png(n) for n in range(3 * MAX_BATCH + 1)}

    answer = await api.post("/jobs", files={"files": ("all.zip", zip_of(members), "application/zip")})

    ids = [job["id"] for job in answer.json()["jobs"]]
    assert enqueued_tasks(redis_db) == [ids[0:4], ids[4:8], ids[8:12], ids[12:13]]


async def test_a_request_over_the_unzipped_limit_is_refused_before_any_job_exists(serve: Serve, redis_db: Redis,
                                                                                store: JobStore):
    api = await serve(max_unzipped_bytes=5000)
    archive = zip_of({f"{n}.bin": bytes(1000) for n in range(6)})  # stored: 6000 bytes unzipped

    assert_problem(await api.post("/jobs", files={"files": ("big.zip", archive)}), 413, "upload-too-large")
    assert store.queued_count() == 0 and enqueued_tasks(redis_db) == []
    assert list(redis_db.scan_iter("pneuradnet:batch:*")) == []


async def test_a_batch_being_admitted_holds_its_places_in_the_queue(store: JobStore):
    opened, _ = store.open_batch(total=5, max_queue=6)

    with pytest.raises(QueueFull) as full:
        store.open_batch(total=2, max_queue=6)
    assert full.value.queued == 5  # places reserved by a batch still being admitted count as taken
    store.add_jobs(opened, [], stored_before=0)
    assert store.close_admission(opened.id) == 5  # nothing stored: an admission cut short keeps what it has
    assert store.get_batch(opened.id).total == 0 and store.get_batch(opened.id).interrupted == 5
    store.open_batch(total=2, max_queue=6)  # its places are free again


async def test_the_same_files_give_the_same_batch_across_requests(api: httpx.AsyncClient, redis_db: Redis):
    archive = zip_of({f"{n}.png": png(n) for n in range(6)})
    key = {"Idempotency-Key": "study-7"}

    first = await api.post("/jobs", files={"files": ("s.zip", archive)}, headers=key)
    again = await api.post("/jobs", files={"files": ("s.zip", archive)}, headers=key)
    other = await api.post("/jobs", files={"files": ("s.zip", zip_of({"0.png": png(9)}))}, headers=key)

    assert again.json()["batch_id"] == first.json()["batch_id"]
    assert [job["id"] for job in again.json()["jobs"]] == [job["id"] for job in first.json()["jobs"]]
    assert_problem(other, 422, "idempotency-conflict")
    assert len([job_id for task in enqueued_tasks(redis_db) for job_id in task]) == 6
