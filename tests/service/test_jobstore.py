import time
from collections.abc import Iterator

import pytest
from redis import Redis

from service import jobstore, keys
from service.jobstore import JobStatus, JobStore, Upload, new_token
from service.keys import RUNNING_REGISTRY
from tests.live_service import empty_database

LEASE = 60


def submit(store: JobStore, *names: str) -> list[jobstore.Job]:
    _, jobs, _ = store.create_batch([Upload(filename=name, data=f"bytes of {name}".encode()) for name in names])
    return jobs


def test_a_batch_is_stored_with_its_jobs_images_and_expiry(store: JobStore, redis: Redis):
    batch, jobs, _ = store.create_batch([Upload("a.png", b"\x89PNG a"), Upload("b.jpeg", b"\xff\xd8 b")])

    assert store.get_batch(batch.id).total == 2
    assert store.batch_job_ids(batch.id) == [job.id for job in jobs]
    assert [job.status for job in store.get_jobs([job.id for job in jobs])] == [JobStatus.QUEUED] * 2
    assert store.images([jobs[1].id])[0] == b"\xff\xd8 b"
    assert store.queued_count() == 2
    for key in (keys.batch_key(batch.id), keys.job_key(jobs[0].id), keys.image_key(jobs[0].id)):
        assert 0 < redis.ttl(key) <= 600


def test_jobs_added_to_a_batch_that_has_expired_are_not_stored_nor_their_images(store: JobStore, redis: Redis):
    batch, _ = store.open_batch(total=2)
    redis.delete(keys.batch_key(batch.id))  # its TTL ran out while the upload was still being read

    with pytest.raises(jobstore.AdmissionClosed):
        store.add_jobs(batch, [Upload("a.png", b"\x89PNG a"), Upload("b.png", b"\x89PNG b")], stored_before=0)
    assert redis.keys(keys.job_key("*")) == []  # neither records nor images (their keys extend the record's)
    assert store.queued_count() == 0


def test_a_job_runs_then_succeeds_and_its_image_is_deleted(store: JobStore, redis: Redis):
    (job,) = submit(store, "a.png")

    (running,) = store.claim([job.id], token="run-1", lease=LEASE)
    assert running.status is JobStatus.RUNNING and running.deliveries == 1 and running.started_at
    assert running.token == "run-1" and running.queue_wait is not None and 0 <= running.queue_wait < 5
    lease_end, now = redis.zscore(RUNNING_REGISTRY, job.id), store.redis_now()
    assert now + LEASE - 1 < lease_end <= now + LEASE  # the lease is on Redis' clock
    assert store.queued_count() == 0

    assert store.succeed_many({job.id: {"predicted_class": "NORMAL"}}, holder="run-1") == [job.id]
    done = store.get_job(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.result == {"predicted_class": "NORMAL"} and done.finished_at
    assert store.images([job.id])[0] is None
    assert redis.zscore(RUNNING_REGISTRY, job.id) is None


def test_a_finished_job_is_never_started_or_finished_again(store: JobStore):
    (job,) = submit(store, "a.png")
    store.claim([job.id], token="run-1", lease=LEASE)
    store.succeed_many({job.id: {"n": 1}}, holder="run-1")

    assert store.claim([job.id], token="run-2", lease=LEASE) == []
    assert store.succeed_many({job.id: {"n": 2}}, holder="run-2") == []
    assert not store.fail(job.id, {"detail": "late"}, holder="run-1")
    assert store.get_job(job.id).result == {"n": 1}


def test_a_leased_job_is_claimed_by_no_other_until_its_lease_is_over(store: JobStore, redis: Redis):
    (job,) = submit(store, "a.png")
    store.claim([job.id], token="run-1", lease=LEASE)

    assert store.claim([job.id], token="run-2", lease=LEASE) == []  # a copy of the task, delivered twice
    assert not store.requeue_abandoned(job.id)  # nor does the reconciler take it back
    assert store.get_job(job.id).token == "run-1"

    redis.zadd(RUNNING_REGISTRY, {job.id: store.redis_now() - 1})  # its worker died: the lease ran out
    (again,) = store.claim([job.id], token="run-2", lease=LEASE)
    assert again.deliveries == 2 and again.token == "run-2"
    assert store.get_batch(job.batch_id).counts[JobStatus.RUNNING] == 1


def test_only_the_holder_of_a_lease_stores_the_outcome(store: JobStore, redis: Redis):
    first, second = submit(store, "a.png", "b.png")
    store.claim([first.id, second.id], token="run-1", lease=LEASE)
    redis.zadd(RUNNING_REGISTRY, {first.id: store.redis_now() - 1})
    store.claim([first.id], token="run-2", lease=LEASE)  # taken over: run 1 was thought dead, and was not

    assert store.succeed_many({first.id: {"by": 1}, second.id: {"by": 1}}, holder="run-1") == [second.id]
    assert not store.fail(first.id, {"detail": "late"}, holder="run-1")
    assert store.succeed_many({first.id: {"by": 2}}, holder="run-2") == [first.id]
    assert [job.result for job in store.get_jobs([first.id, second.id])] == [{"by": 2}, {"by": 1}]
    assert store.metrics()["jobs_succeeded"] == 2


def test_a_holder_gives_back_what_it_cannot_finish_without_using_up_a_delivery(store: JobStore):
    held, finished = submit(store, "a.png", "b.png")
    store.claim([held.id, finished.id], token="run-1", lease=LEASE)
    store.succeed_many({finished.id: {}}, holder="run-1")

    assert store.give_back([held.id, finished.id], holder="run-1") == [held.id]

    back = store.get_job(held.id)
    assert back.status is JobStatus.QUEUED and back.deliveries == 0
    assert store.queued_count() == 1 and store.running_count() == 0
    assert store.claim([held.id], token="run-2", lease=LEASE)[0].deliveries == 1


def test_only_a_queued_job_can_be_canceled(store: JobStore):
    queued, running = submit(store, "a.png", "b.png")
    store.claim([running.id], token="run-1", lease=LEASE)

    assert store.cancel(queued.id)
    assert not store.cancel(running.id)
    assert store.get_job(queued.id).status is JobStatus.CANCELED
    assert store.claim([queued.id], token="run-2", lease=LEASE) == []
    assert store.images([queued.id])[0] is None


def test_every_transition_is_published_on_the_job_channel(store: JobStore, redis: Redis):
    (job,) = submit(store, "a.png")
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.job_channel(job.id))
    pubsub.get_message(timeout=1)  # the subscription confirmation

    store.claim([job.id], token="run-1", lease=LEASE)
    store.fail(job.id, {"detail": "broken"}, holder="run-1")

    messages = [pubsub.get_message(timeout=1) for _ in range(2)]
    assert [message["data"] for message in messages] == ["running", "failed"]
    pubsub.close()


def test_an_explained_job_keeps_its_heatmap_as_long_as_its_record(store: JobStore, redis: Redis):
    _, (job,), _ = store.create_batch([Upload("a.png", b"\x89PNG a")], explain=True)
    (plain,) = submit(store, "b.png")
    assert store.get_job(job.id).explain and not store.get_job(plain.id).explain

    store.claim([job.id], token="run-1", lease=LEASE)
    assert store.save_heatmap(job.id, b"\x89PNG heatmap")
    store.succeed_many({job.id: {"heatmap": True}}, holder="run-1")

    assert store.heatmap(job.id) == b"\x89PNG heatmap"
    assert store.heatmap(plain.id) is None
    assert abs(redis.pttl(keys.heatmap_key(job.id)) - redis.pttl(keys.job_key(job.id))) < 1000
    assert not store.save_heatmap("no-such-job", b"\x89PNG")
    assert store.heatmap("no-such-job") is None


def test_the_same_files_with_and_without_explain_are_different_submissions(store: JobStore):
    uploads = [Upload("a.png", b"\x89PNG a")]
    store.create_batch(uploads, idempotency="key-1")

    with pytest.raises(jobstore.IdempotencyConflict):
        store.create_batch(uploads, idempotency="key-1", explain=True)


def test_an_unknown_job_is_none_and_cannot_move(store: JobStore):
    assert store.get_job("no-such-job") is None
    assert store.claim(["no-such-job"], token="run-1", lease=LEASE) == []
    assert store.succeed_many({"no-such-job": {}}, holder="run-1") == []


MOVES = {
    (JobStatus.QUEUED, JobStatus.RUNNING), (JobStatus.RUNNING, JobStatus.RUNNING),  # the latter: its lease was over
    (JobStatus.RUNNING, JobStatus.SUCCEEDED),
    (JobStatus.RUNNING, JobStatus.FAILED), (JobStatus.QUEUED, JobStatus.CANCELED),
    (JobStatus.RUNNING, JobStatus.QUEUED),  # the reconciler takes a job back from a vanished worker
}
"""The state machine the README documents: every (from, to) move a job may make; no other."""


def put_in(store: JobStore, redis: Redis, status: JobStatus) -> jobstore.Job:
    (job,) = submit(store, "a.png")
    if status is not JobStatus.QUEUED:
        assert store.claim([job.id], token="holder", lease=LEASE)
    if status is JobStatus.RUNNING:
        redis.zadd(RUNNING_REGISTRY, {job.id: store.redis_now() - 1})  # its worker vanished
    if status is JobStatus.SUCCEEDED:
        assert store.succeed_many({job.id: {}}, holder="holder")
    elif status is JobStatus.FAILED:
        assert store.fail(job.id, {"detail": "broken"}, holder="holder")
    elif status is JobStatus.CANCELED:
        (job,) = submit(store, "b.png")
        assert store.cancel(job.id)
    return job


def move(store: JobStore, job: jobstore.Job, target: JobStatus) -> bool:
    """Each move as the one who makes it: a new claim, the outcome of the run holding the job (of another run, once
    it is finished), the reconciler, a client's cancel."""
    current = store.get_job(job.id)
    holder = current.token if current.status is JobStatus.RUNNING else "another-run"
    if target is JobStatus.RUNNING:
        return store.claim([job.id], token=new_token(), lease=LEASE) != []
    if target is JobStatus.SUCCEEDED:
        return store.succeed_many({job.id: {"n": 2}}, holder=holder) != []
    if target is JobStatus.FAILED:
        return store.fail(job.id, {"detail": "late"}, holder=holder)
    if target is JobStatus.QUEUED:
        return store.requeue_abandoned(job.id)
    return store.cancel(job.id)


@pytest.mark.parametrize("target", list(JobStatus))
@pytest.mark.parametrize("current", list(JobStatus))
def test_the_transition_script_makes_exactly_the_documented_moves(store: JobStore, redis: Redis, current: JobStatus,
                                                                  target: JobStatus):
    job = put_in(store, redis, current)
    before = store.get_batch(job.batch_id).counts

    moved = move(store, job, target)

    assert moved == ((current, target) in MOVES)
    assert store.get_job(job.id).status is (target if moved else current)
    after = store.get_batch(job.batch_id).counts
    if moved and current is not target:  # the batch's counts follow the job, and only when it moves
        assert (after[current], after[target]) == (before[current] - 1, before[target] + 1)
    else:
        assert after == before


def test_a_batch_counts_its_finished_jobs_and_announces_each(store: JobStore, redis: Redis):
    batch, (done, canceled, waiting), _ = store.create_batch([Upload(f"{n}.png", b"x") for n in range(3)])
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.batch_channel(batch.id))
    pubsub.get_message(timeout=1)

    store.claim([done.id], token="run-1", lease=LEASE)
    store.succeed_many({done.id: {}}, holder="run-1")
    store.cancel(canceled.id)

    assert store.get_batch(batch.id).finished == 2 and not store.get_batch(batch.id).done
    assert store.get_batch(batch.id).counts == {JobStatus.QUEUED: 1, JobStatus.RUNNING: 0, JobStatus.SUCCEEDED: 1,
                                                JobStatus.FAILED: 0, JobStatus.CANCELED: 1}
    assert [pubsub.get_message(timeout=1)["data"] for _ in range(2)] == ["succeeded", "canceled"]
    store.claim([waiting.id], token="run-2", lease=LEASE)
    store.fail(waiting.id, {"detail": "broken"}, holder="run-2")
    assert store.get_batch(batch.id).done
    pubsub.close()


def test_a_repeat_of_an_idempotency_key_still_being_admitted_is_told_so_and_never_given_part_of_it(store: JobStore):
    uploads = [Upload(f"{n}.png", b"png") for n in range(32)]
    fingerprint = jobstore._fingerprint(uploads)
    batch, _ = store.open_batch(total=32, idempotency="upload-1", fingerprint=fingerprint)
    store.add_jobs(batch, uploads[:16], stored_before=0)  # half of it stored, the rest still being read

    with pytest.raises(jobstore.IdempotencyInProgress):
        store.open_batch(total=32, idempotency="upload-1", fingerprint=fingerprint)
    with pytest.raises(jobstore.IdempotencyConflict):  # other files under the key are refused, as ever
        store.open_batch(total=1, idempotency="upload-1", fingerprint="other files")

    store.add_jobs(batch, uploads[16:], stored_before=16)
    store.close_admission(batch.id)
    repeat, created = store.open_batch(total=32, idempotency="upload-1", fingerprint=fingerprint)
    assert (repeat.id, created, repeat.total) == (batch.id, False, 32)


def test_a_withdrawn_batch_is_never_a_repeats_answer(store: JobStore, redis: Redis):
    """Found by bench/chaos.py, seed 987654321: a batch stored whole whose enqueue failed was withdrawn, and a
    concurrent repeat of its Idempotency-Key got it as its 202 (its jobs canceled) while the retry got another batch.
    Its key was marked admitted, then deleted a moment later: between the two, the key named a batch being
    withdrawn. Redis' keyspace events show every write to the key."""
    uploads = [Upload(f"{n}.png", b"png") for n in range(2)]
    batch, _ = store.open_batch(total=2, idempotency="upload-1", fingerprint=jobstore._fingerprint(uploads))
    store.add_jobs(batch, uploads, stored_before=0)  # stored whole: then the broker refused its task
    db = redis.connection_pool.connection_kwargs["db"]
    events_before = redis.config_get("notify-keyspace-events")["notify-keyspace-events"]
    redis.config_set("notify-keyspace-events", "Kg$")
    watch = redis.pubsub()
    watch.subscribe(f"__keyspace@{db}__:{keys.idempotency_key('', 'upload-1')}")
    watch.get_message(timeout=1)  # the subscription's confirmation
    try:
        store.withdraw_batch(batch.id)
        writes = []
        while message := watch.get_message(timeout=0.5):
            writes.append(message["data"])
    finally:
        watch.close()
        redis.config_set("notify-keyspace-events", events_before)

    assert writes == ["del"]  # freed in the step that closes the admission, never marked admitted before
    assert [job.status for job in store.get_jobs(store.batch_job_ids(batch.id))] == [JobStatus.CANCELED] * 2
    retry, created = store.open_batch(total=2, idempotency="upload-1", fingerprint=jobstore._fingerprint(uploads))
    assert created and retry.id != batch.id


def test_an_admission_cut_short_frees_its_idempotency_key_for_the_retry(store: JobStore):
    batch, _ = store.open_batch(total=32, idempotency="upload-1", fingerprint="f")
    store.add_jobs(batch, [Upload(f"{n}.png", b"png") for n in range(16)], stored_before=0)

    assert store.close_admission(batch.id) == 16  # its API died: the reconciler closes it

    kept = store.get_batch(batch.id)
    assert (kept.total, kept.interrupted) == (16, 16)
    retry, created = store.open_batch(total=32, idempotency="upload-1", fingerprint="f")
    assert created and retry.id != batch.id


def test_a_closed_admission_stores_no_more_jobs(store: JobStore, redis: Redis):
    batch, _ = store.open_batch(total=32)
    store.add_jobs(batch, [Upload(f"{n}.png", b"png") for n in range(16)], stored_before=0)
    store.close_admission(batch.id)  # the reconciler took its API for dead; the API was only slow

    late = [Upload(f"late-{n}.png", b"png") for n in range(16)]
    with pytest.raises(jobstore.AdmissionClosed):
        store.add_jobs(batch, late, stored_before=16)

    closed = store.get_batch(batch.id)
    assert (closed.total, closed.counts[JobStatus.QUEUED]) == (16, 16)
    assert store.queued_count() == 16 and redis.hlen(keys.ADMISSIONS) == 0
    assert len(redis.keys(keys.image_key("*"))) == 16  # the refused jobs' images were not kept either


def test_writes_whose_answer_was_lost_are_carried_out_once(store_of_its_own: JobStore):
    """redis-py sends a command again after a connection error, and the first sending may have been carried out:
    here it always was (the proxy cuts the connection once the answer has started). On a database of its own: the
    lost answers take seconds, and a live worker's reconciler would take the jobs left queued for stranded."""
    from tests.lossy_proxy import lossy_proxy

    store = store_of_its_own
    redis = Redis.from_url(QUIET_REDIS_URL, decode_responses=True)
    database = QUIET_REDIS_URL.rsplit("/", 1)[1]
    with lossy_proxy() as proxy:
        lossy = JobStore(f"{proxy.url}/{database}", ttl=600)
        proxy.lose_next_answer()
        batch, created = lossy.open_batch(total=20, idempotency="upload-1", fingerprint="f", max_queue=20)
        assert created  # not mistaken for a repeat of an earlier request (an empty 202), nor for a full queue

        proxy.lose_next_answer()
        jobs = lossy.add_jobs(batch, [Upload(f"{n}.png", b"png") for n in range(16)], stored_before=0)
        proxy.lose_next_answer()
        (claimed,) = lossy.claim([jobs[0].id], token="run-1", lease=LEASE)
        proxy.lose_next_answer()
        assert lossy.succeed_many({claimed.id: {"n": 1}}, holder="run-1") == [claimed.id]
        proxy.lose_next_answer()
        assert lossy.cancel(jobs[1].id)
        assert proxy.lost == 5
        lossy.close()

    stored = store.get_batch(batch.id)
    assert (stored.total, int(redis.hget(keys.batch_key(batch.id), "admitted"))) == (20, 16)
    assert stored.counts == {JobStatus.QUEUED: 18, JobStatus.RUNNING: 0, JobStatus.SUCCEEDED: 1,
                             JobStatus.FAILED: 0, JobStatus.CANCELED: 1}
    assert store.batch_job_ids(batch.id) == [job.id for job in jobs]
    assert int(redis.hget(keys.ADMISSIONS, batch.id)) == 4  # the 4 images not read yet keep their places
    assert store.get_job(claimed.id).deliveries == 1
    metrics = store.metrics()
    assert (metrics["jobs_submitted"], metrics["jobs_running"], metrics["jobs_succeeded"]) == (16, 1, 1)
    redis.close()


def test_the_jobs_of_a_process_known_dead_are_queued_again_whatever_their_lease(store: JobStore):
    held, other = submit(store, "a.png", "b.png")
    store.claim([held.id], token="run-1", lease=LEASE, worker="host-a:41")
    store.claim([other.id], token="run-2", lease=LEASE, worker="host-a:42")

    assert store.release_dead([held.id, other.id], process="host-a:41") == [held.id]

    back, running = store.get_jobs([held.id, other.id])
    assert back.status is JobStatus.QUEUED and back.deliveries == 1  # a death counts towards MAX_DELIVERIES
    assert running.status is JobStatus.RUNNING and running.token == "run-2"
    assert store.claim([held.id], token="run-3", lease=LEASE)[0].deliveries == 2


QUIET_REDIS_URL = "redis://127.0.0.1:6379/12"
"""A database of its own: no worker's reconciler, nor another session's wipe, touches what its tests time."""


@pytest.fixture
def store_of_its_own() -> Iterator[JobStore]:
    with empty_database(QUIET_REDIS_URL):
        own = JobStore(QUIET_REDIS_URL, ttl=600)
        yield own
        own.close()


def test_the_oldest_queued_job_s_age_is_read_per_lane(store_of_its_own: JobStore):
    store = store_of_its_own
    assert store.oldest_queued_ages() == {jobstore.Lane.INTERACTIVE: 0.0, jobstore.Lane.BULK: 0.0}
    earlier = submit(store, "a.png", "b.png")
    time.sleep(1.0)
    submit(store, "c.png")

    ages = store.oldest_queued_ages()

    assert ages[jobstore.Lane.INTERACTIVE] == 0.0
    assert 1.0 <= ages[jobstore.Lane.BULK] < 5.0  # the first job's, not the newest's
    store.claim([job.id for job in earlier], token=new_token(), lease=LEASE)
    assert store.oldest_queued_ages()[jobstore.Lane.BULK] < 1.0  # the job left waiting is the newer one
