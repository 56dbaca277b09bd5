"""Lanes and fair share at the API: small submissions and POST /predict/ go to the interactive queue, large ones
to the bulk lane, where each API key hands the broker only its window of chunks; admission is atomic."""

import asyncio

import httpx
from redis import Redis

from service.fairshare import window_for
from service.queue import BULK_QUEUE, INTERACTIVE_QUEUE
from tests.api.routes.support import Serve, assert_problem, bearer, images, pending_chunks, queue_tasks, stored_keys

ALICE = "alice-key-0123456789"
BOB = "bob-key-9876543210"


def names(count: int) -> list[str]:
    return [f"{n}.png" for n in range(count)]


async def test_a_small_submission_is_interactive_and_a_large_one_bulk(api: httpx.AsyncClient, redis_db: Redis):
    small = await api.post("/jobs", files=images(*names(4)))
    large = await api.post("/jobs", files=images(*names(5)))

    assert small.json()["lane"] == "interactive" and large.json()["lane"] == "bulk"
    assert [job_ids for job_ids, _ in queue_tasks(redis_db, INTERACTIVE_QUEUE)] == [
        [job["id"] for job in small.json()["jobs"]]]
    # The key's window (one chunk: no worker is alive) is in the broker; its second chunk waits its turn.
    assert [job_ids for job_ids, _ in queue_tasks(redis_db, BULK_QUEUE)] == [
        [job["id"] for job in large.json()["jobs"][:4]]]
    batch = await api.get(f"/batches/{large.json()['batch_id']}")
    assert batch.json()["lane"] == "bulk"


async def test_a_client_may_send_a_small_submission_to_bulk_but_never_a_large_one_to_interactive(
        api: httpx.AsyncClient, redis_db: Redis):
    to_bulk = await api.post("/jobs", params={"priority": "bulk"}, files=images("a.png"))
    refused = await api.post("/jobs", params={"priority": "interactive"}, files=images(*names(5)))

    assert to_bulk.status_code == 202 and to_bulk.json()["lane"] == "bulk"
    [(job_ids, kwargs)] = queue_tasks(redis_db, BULK_QUEUE)
    assert job_ids == [to_bulk.json()["jobs"][0]["id"]] and kwargs["chunk"]  # a chunk that releases the next
    problem = assert_problem(refused, 422, "too-large-for-interactive")
    assert "INTERACTIVE_MAX_IMAGES" in problem["detail"]
    assert queue_tasks(redis_db, INTERACTIVE_QUEUE) == []
    assert len(stored_keys(redis_db)) == 4  # the small bulk batch only: its record, job list, job and image


async def test_predict_always_goes_to_the_interactive_lane(serve: Serve, redis_db: Redis):
    api = await serve(predict_timeout=0.2, interactive_max_images=0)

    answer = await api.post("/predict/", files={"file": ("a.png", images("a.png")[0][1][1], "image/png")})

    assert_problem(answer, 504, "prediction-timeout")  # no worker here: the job waits in the interactive queue
    [(job_ids, _)] = queue_tasks(redis_db, INTERACTIVE_QUEUE)
    assert answer.headers["Location"] == f"/jobs/{job_ids[0]}"


async def test_each_key_hands_the_broker_only_its_window_of_bulk_chunks(serve: Serve, redis_db: Redis):
    api = await serve(api_keys=f"{ALICE},{BOB}")
    window = window_for(0)  # no worker is alive in this test

    alices = await api.post("/jobs", files=images(*names(20)), headers=bearer(ALICE))  # 5 chunks of 4
    bobs = await api.post("/jobs", files=images(*names(8)), headers=bearer(BOB))  # 2 chunks

    in_broker = [job_ids for job_ids, _ in queue_tasks(redis_db, BULK_QUEUE)]
    alice_ids = [job["id"] for job in alices.json()["jobs"]]
    bob_ids = [job["id"] for job in bobs.json()["jobs"]]
    # Bob's chunks wait behind Alice's window, not behind her 20 images.
    assert in_broker == [alice_ids[4 * n:4 * n + 4] for n in range(window)] + [bob_ids[4 * n:4 * n + 4]
                                                                               for n in range(window)]
    assert sorted(job_id for chunk in pending_chunks(redis_db) for job_id in chunk) == sorted(
        alice_ids[4 * window:] + bob_ids[4 * window:])
    metrics = (await api.get("/metrics")).text
    assert "pneuradnet_bulk_keys_waiting 2.0" in metrics
    assert 'pneuradnet_lane_queue_depth{lane="bulk"} 28.0' in metrics
    assert 'pneuradnet_lane_queue_depth{lane="interactive"} 0.0' in metrics


async def test_concurrent_submissions_never_push_the_queue_past_max_queue(serve: Serve, redis_db: Redis):
    api = await serve(max_queue=10)

    answers = await asyncio.gather(*(api.post("/jobs", files=images(*names(3))) for _ in range(8)))

    accepted = [answer for answer in answers if answer.status_code == 202]
    assert len(accepted) == 3  # 9 jobs; a fourth submission would make 12
    for answer in answers:
        if answer.status_code != 202:
            assert_problem(answer, 429, "queue-full")
    metrics = (await api.get("/metrics")).text
    assert "pneuradnet_queue_depth 9.0" in metrics


async def test_a_retried_submission_gets_its_batch_back_even_when_the_queue_is_full(serve: Serve, redis_db: Redis):
    api = await serve(max_queue=2)
    first = await api.post("/jobs", files=images("a.png", "b.png"), headers={"Idempotency-Key": "upload-1"})

    again = await api.post("/jobs", files=images("a.png", "b.png"), headers={"Idempotency-Key": "upload-1"})

    assert again.status_code == 202 and again.json()["batch_id"] == first.json()["batch_id"]
    assert_problem(await api.post("/jobs", files=images("c.png")), 429, "queue-full")
