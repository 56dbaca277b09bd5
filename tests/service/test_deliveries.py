"""Callback deliveries on a real Redis, no worker: the one transition that finishes a batch makes its callback due,
an attempt is claimed by one task only, an attempt overtaken records nothing, and the reconciler sends what is
overdue. (tests/worker/test_webhooks.py delivers to a real receiver with real worker processes.)"""

import base64
import json
import threading
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from service.deliveries import Deliveries
from service.fairshare import FairShare
from service.images import JobImages
from service.jobstore import JobStore, Upload
from service.keys import WEBHOOKS_DUE
from service.queue import WEBHOOK_QUEUE, make_celery
from service.reconciler import Reconciler
from service.settings import Settings
from service.webhooks import Callback, CallbackState, Verdict
from service.workers import WorkerRegistry
from tests.live_service import UNCONSUMED_REDIS_URL, empty_database

URL = UNCONSUMED_REDIS_URL
"""No worker of the test session consumes it: the tasks a test sends stay where it can read them."""

CALLBACK = Callback("https://hooks.example.org/done", "http://api.test/")


@pytest.fixture
def redis() -> Iterator[Redis]:
    with empty_database(URL) as client:
        yield client


@pytest.fixture
def deliveries(redis: Redis) -> Iterator[Deliveries]:
    book = Deliveries(URL)
    yield book
    book.close()


def finished_batch(store: JobStore, count: int = 1, callback: Callback | None = CALLBACK) -> str:
    batch, jobs, _ = store.create_batch([Upload(f"{n}.png", b"png") for n in range(count)], callback=callback)
    for job in jobs:
        store.claim([job.id], token="run-1", lease=60)
        store.succeed_many({job.id: {"predicted_class": "NORMAL"}}, holder="run-1")
    return batch.id


def finish_with(together: threading.Barrier, store: JobStore, job_id: str) -> None:
    together.wait()
    store.succeed_many({job_id: {"predicted_class": "NORMAL"}}, holder="run-1")


def test_the_last_of_two_jobs_finished_at_the_same_moment_makes_the_callback_due_once(redis: Redis):
    due: list[str] = []
    stores = [JobStore(URL, ttl=600, on_delivery_due=lambda batch_id, _: due.append(batch_id)) for _ in range(2)]
    batch_ids = []
    for _ in range(200):
        batch, jobs, _ = stores[0].create_batch([Upload("a.png", b"a"), Upload("b.png", b"b")], callback=CALLBACK)
        stores[0].claim([job.id for job in jobs], token="run-1", lease=60)
        batch_ids.append(batch.id)
        together = threading.Barrier(2)
        threads = [threading.Thread(target=finish_with, args=(together, store, job.id))
                   for store, job in zip(stores, jobs, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(due) == sorted(batch_ids)  # each batch once, none twice
    assert redis.zcard(WEBHOOKS_DUE) == 200
    for batch_id in batch_ids[:5]:
        callback = stores[0].get_batch(batch_id).callback
        assert callback.state is CallbackState.PENDING and callback.delivery_id and callback.attempts == 0
    for store in stores:
        store.close()


def test_a_batch_finished_by_cancellation_is_due_and_one_without_callback_never(redis: Redis):
    due: list[str] = []
    store = JobStore(URL, ttl=600, on_delivery_due=lambda batch_id, channel: due.append(batch_id))
    batch, _, _ = store.create_batch([Upload("a.png", b"a"), Upload("b.png", b"b")], callback=CALLBACK)
    assert store.get_batch(batch.id).callback.delivery_id is None
    store.cancel_batch(batch.id)
    plain = finished_batch(store, 2, callback=None)
    assert due == [batch.id]
    assert store.get_batch(plain).callback is None
    store.close()


def test_one_task_of_those_sent_for_an_attempt_makes_it(redis: Redis, deliveries: Deliveries):
    store = JobStore(URL, ttl=600)
    batch_id = finished_batch(store)
    first = deliveries.claim(batch_id, attempts_seen=0, lease=60)
    assert first is not None and first.number == 1
    assert first.fields["callback_url"] == CALLBACK.url
    assert deliveries.claim(batch_id, attempts_seen=0, lease=60) is None  # the same task again: stale
    assert deliveries.claim(batch_id, attempts_seen=1, lease=60) is None  # the lease is held: busy
    assert store.get_batch(batch_id).callback.state is CallbackState.DELIVERING

    recorded = deliveries.record(batch_id, 1, Verdict.RETRY, status=503, retry_wait=30, max_age=3600)
    assert recorded.state is CallbackState.PENDING and recorded.next_attempt_at > time.time() + 25
    callback = store.get_batch(batch_id).callback
    assert (callback.state, callback.attempts, callback.last_status) == (CallbackState.PENDING, 1, 503)
    assert deliveries.record(batch_id, 1, Verdict.DELIVERED, status=200, retry_wait=0, max_age=3600) is None

    second = deliveries.claim(batch_id, attempts_seen=1, lease=60)
    assert second is not None and second.number == 2
    assert deliveries.record(batch_id, 2, Verdict.DELIVERED, status=200, retry_wait=0, max_age=3600).state \
        is CallbackState.DELIVERED
    assert deliveries.claim(batch_id, attempts_seen=2, lease=60) is None  # delivered: nothing more
    assert redis.zcard(WEBHOOKS_DUE) == 0
    store.close()


def test_an_attempt_whose_lease_ran_out_is_taken_over_and_its_late_outcome_ignored(redis, deliveries):
    store = JobStore(URL, ttl=600)
    batch_id = finished_batch(store)
    assert deliveries.claim(batch_id, attempts_seen=0, lease=0.2).number == 1
    time.sleep(0.3)  # its worker died mid-request
    assert deliveries.claim(batch_id, attempts_seen=1, lease=60).number == 2
    assert deliveries.record(batch_id, 1, Verdict.DELIVERED, status=200, retry_wait=0, max_age=3600) is None
    assert deliveries.record(batch_id, 2, Verdict.GIVE_UP, status=400, error="the receiver answered 400",
                             retry_wait=0, max_age=3600).state is CallbackState.FAILED
    callback = store.get_batch(batch_id).callback
    assert (callback.state, callback.attempts, callback.last_status) == (CallbackState.FAILED, 2, 400)
    store.close()


def test_no_retry_starts_past_the_max_age(redis: Redis, deliveries: Deliveries):
    store = JobStore(URL, ttl=600)
    batch_id = finished_batch(store)
    deliveries.claim(batch_id, attempts_seen=0, lease=60)
    recorded = deliveries.record(batch_id, 1, Verdict.RETRY, error="refused", retry_wait=10, max_age=5)
    assert recorded.state is CallbackState.FAILED
    assert "WEBHOOK_MAX_AGE" in store.get_batch(batch_id).callback.last_error
    store.close()


def test_the_reconciler_sends_an_overdue_delivery_once_per_resend_period(redis: Redis, deliveries: Deliveries):
    store = JobStore(URL, ttl=600)  # no on_delivery_due: as if the worker died before sending the task
    batch_id = finished_batch(store)
    gone = finished_batch(store)
    redis.delete(f"pneuradnet:batch:{gone}")  # expired
    assert deliveries.overdue(after=0) == {batch_id: 0}
    assert deliveries.overdue(after=5) == {}  # pushed on: the next sweep does not send it again at once
    assert redis.zrange(WEBHOOKS_DUE, 0, -1) == [batch_id]

    redis.zadd(WEBHOOKS_DUE, {batch_id: 0})
    resent, (message,) = sweep_for_deliveries(store)
    store.close()

    assert resent == 1
    assert message["headers"]["task"] == "pneuradnet.deliver_callback"
    assert json.loads(base64.b64decode(message["body"]))[0] == [batch_id, 0]


def sweep_for_deliveries(store: JobStore) -> tuple[int, list[dict]]:
    """One sweep of a reconciler of the Redis at URL: the deliveries it sent again, and the tasks then waiting on
    the deliveries' queue."""
    celery = make_celery(Settings(redis_url=URL))
    workers, fair_share = WorkerRegistry(URL), FairShare(URL, ttl=600)
    reconciler = Reconciler(url=URL, store=store, images=JobImages(store, None, None), workers=workers,
                            fair_share=fair_share, celery=celery, max_batch=16, bulk_chunk=64,
                            sweep_interval=30)
    try:
        resent = reconciler.sweep().callbacks
        return resent, [json.loads(raw) for raw in Redis.from_url(URL).lrange(WEBHOOK_QUEUE, 0, -1)]
    finally:
        for part in (reconciler, fair_share, workers):
            part.close()
        celery.close()


def test_a_batch_finished_by_its_own_admission_is_due(redis: Redis):
    store = JobStore(URL, ttl=600)
    unreadable = {"type": "urn:pneuradnet:problem:invalid-zip-member", "title": "Invalid ZIP member", "status": 422,
                  "detail": "member a.png of s.zip cannot be read"}
    every_member_bad, _ = store.open_batch(total=1, callback=CALLBACK)
    store.add_jobs(every_member_bad, [Upload("a.png", b"", error=unreadable)], stored_before=0)
    cut_short, _ = store.open_batch(total=3, callback=CALLBACK)  # its API dies after one image, which then finishes
    (job,) = store.add_jobs(cut_short, [Upload("b.png", b"b")], stored_before=0)
    store.claim([job.id], token="run-1", lease=60)
    store.succeed_many({job.id: {"predicted_class": "NORMAL"}}, holder="run-1")
    assert redis.zscore(WEBHOOKS_DUE, cut_short.id) is None  # two of its three images are still to come

    store.close_admission(cut_short.id)

    assert set(redis.zrange(WEBHOOKS_DUE, 0, -1)) == {every_member_bad.id, cut_short.id}
    store.close()
