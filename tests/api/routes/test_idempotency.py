"""Idempotency-Key: a retried upload gets its first batch back and is not enqueued twice; the same key with
other files is refused; a repeat while the first is still being admitted is told to wait (Stripe's 409), and an
admission that fails frees its key."""

import asyncio
from collections.abc import Callable

import httpx
from redis import Redis

from service.jobstore import JobStatus, JobStore
from tests.api.routes.support import Serve, assert_problem, enqueued_job_ids, enqueued_tasks, images, png, zip_of


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


def hold_after_first_chunk(api: httpx.AsyncClient, then: Callable[[list[str]], None] = lambda _: None,
                           ) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the API pause its admission once the request's first chunk is enqueued (after calling `then` with its
    jobs): an upload still being admitted. The events: the first chunk is enqueued; go on."""
    app = api._transport.app  # type: ignore[attr-defined]  # the ASGI app the client drives
    dispatcher = app.state.dispatcher
    dispatch = dispatcher.dispatch
    enqueued, go_on = asyncio.Event(), asyncio.Event()

    async def first_chunk_then_wait(job_ids: list[str], **where: object) -> None:
        await dispatch(job_ids, **where)
        if not enqueued.is_set():
            then(job_ids)
            enqueued.set()
            await go_on.wait()

    dispatcher.dispatch = first_chunk_then_wait
    return enqueued, go_on


async def test_a_repeat_while_the_first_request_is_being_admitted_is_told_to_wait_not_given_part_of_it(
        serve: Serve, redis_db: Redis):
    # Measured before: a client that retried a 600-image ZIP 0.35 s after sending it got 202 with 16 of the 600 jobs.
    api = await serve()
    upload = {"files": ("study.zip", zip_of({f"{n}.png": png(n) for n in range(12)}))}
    headers = {"Idempotency-Key": "study-9"}
    enqueued, go_on = hold_after_first_chunk(api)
    first = asyncio.create_task(api.post("/jobs", files=upload, headers=headers))
    await enqueued.wait()

    repeat = await api.post("/jobs", files=upload, headers=headers)
    go_on.set()

    body = assert_problem(repeat, 409, "idempotency-in-progress")
    assert repeat.headers["retry-after"] == "2"
    assert "still being admitted" in body["detail"]
    admitted = await first
    assert admitted.status_code == 202 and len(admitted.json()["jobs"]) == 12
    again = await api.post("/jobs", files=upload, headers=headers)
    assert again.json()["batch_id"] == admitted.json()["batch_id"] and len(again.json()["jobs"]) == 12


async def test_an_admission_closed_under_a_slow_upload_is_reported_and_frees_its_key(
        serve: Serve, redis_db: Redis, store: JobStore):
    api = await serve()
    upload = {"files": ("study.zip", zip_of({f"{n}.png": png(n) for n in range(12)}))}
    headers = {"Idempotency-Key": "study-9"}
    closed = []

    def reconciler_takes_it_for_dead(job_ids: list[str]) -> None:
        batch_id = store.get_job(job_ids[0]).batch_id
        closed.append((batch_id, store.close_admission(batch_id)))

    enqueued, go_on = hold_after_first_chunk(api, then=reconciler_takes_it_for_dead)
    first = asyncio.create_task(api.post("/jobs", files=upload, headers=headers))
    await enqueued.wait()
    go_on.set()
    refused = await first

    body = assert_problem(refused, 503, "admission-interrupted")
    assert refused.headers["retry-after"] == "5"
    assert "send the request again" in body["detail"]
    [(batch_id, never_admitted)] = closed
    assert never_admitted == 8  # 2 chunks of 4 not read yet; the first chunk's 4 jobs were canceled (not started)
    assert store.get_batch(batch_id).counts[JobStatus.CANCELED] == 4 and store.queued_count() == 0
    retry = await api.post("/jobs", files=upload, headers=headers)
    assert retry.status_code == 202 and retry.json()["batch_id"] != batch_id and len(retry.json()["jobs"]) == 12
