import time

import pytest
from redis import Redis

from service import jobstore, keys
from service.jobstore import JobStatus, JobStore, Upload
from service.keys import RUNNING_REGISTRY


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

    assert store.add_jobs(batch, [Upload("a.png", b"\x89PNG a"), Upload("b.png", b"\x89PNG b")]) == []
    assert redis.keys(keys.job_key("*")) == []  # neither records nor images (their keys extend the record's)
    assert store.queued_count() == 0


def test_a_job_runs_then_succeeds_and_its_image_is_deleted(store: JobStore, redis: Redis):
    (job,) = submit(store, "a.png")

    running = store.start(job.id, deadline=time.time() + 60)
    assert running.status is JobStatus.RUNNING and running.deliveries == 1 and running.started_at
    assert redis.zscore(RUNNING_REGISTRY, job.id) is not None
    assert store.queued_count() == 0

    assert store.succeed(job.id, {"predicted_class": "NORMAL"})
    done = store.get_job(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.result == {"predicted_class": "NORMAL"} and done.finished_at
    assert store.images([job.id])[0] is None
    assert redis.zscore(RUNNING_REGISTRY, job.id) is None


def test_a_finished_job_is_never_started_or_finished_again(store: JobStore):
    (job,) = submit(store, "a.png")
    store.start(job.id, deadline=time.time() + 60)
    store.succeed(job.id, {"n": 1})

    assert store.start(job.id, deadline=time.time() + 60) is None
    assert not store.succeed(job.id, {"n": 2})
    assert not store.fail(job.id, {"detail": "late"})
    assert store.get_job(job.id).result == {"n": 1}


def test_a_redelivered_running_job_starts_again_and_counts_its_deliveries(store: JobStore):
    (job,) = submit(store, "a.png")
    store.start(job.id, deadline=time.time() + 60)

    assert store.start(job.id, deadline=time.time() + 60).deliveries == 2
    assert store.get_batch(job.batch_id).counts[JobStatus.RUNNING] == 1


def test_only_a_queued_job_can_be_canceled(store: JobStore):
    queued, running = submit(store, "a.png", "b.png")
    store.start(running.id, deadline=time.time() + 60)

    assert store.cancel(queued.id)
    assert not store.cancel(running.id)
    assert store.get_job(queued.id).status is JobStatus.CANCELED
    assert store.start(queued.id, deadline=time.time() + 60) is None
    assert store.images([queued.id])[0] is None


def test_every_transition_is_published_on_the_job_channel(store: JobStore, redis: Redis):
    (job,) = submit(store, "a.png")
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.job_channel(job.id))
    pubsub.get_message(timeout=1)  # the subscription confirmation

    store.start(job.id, deadline=time.time() + 60)
    store.fail(job.id, {"detail": "broken"})

    messages = [pubsub.get_message(timeout=1) for _ in range(2)]
    assert [message["data"] for message in messages] == ["running", "failed"]
    pubsub.close()


def test_an_explained_job_keeps_its_heatmap_as_long_as_its_record(store: JobStore, redis: Redis):
    _, (job,), _ = store.create_batch([Upload("a.png", b"\x89PNG a")], explain=True)
    (plain,) = submit(store, "b.png")
    assert store.get_job(job.id).explain and not store.get_job(plain.id).explain

    store.start(job.id, deadline=time.time() + 60)
    assert store.save_heatmap(job.id, b"\x89PNG heatmap")
    store.succeed(job.id, {"heatmap": True})

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
    assert store.start("no-such-job", deadline=time.time()) is None
    assert not store.succeed("no-such-job", {})


MOVES = {
    (JobStatus.QUEUED, JobStatus.RUNNING), (JobStatus.RUNNING, JobStatus.RUNNING),  # the latter: a redelivery
    (JobStatus.RUNNING, JobStatus.SUCCEEDED), (JobStatus.QUEUED, JobStatus.FAILED),
    (JobStatus.RUNNING, JobStatus.FAILED), (JobStatus.QUEUED, JobStatus.CANCELED),
    (JobStatus.RUNNING, JobStatus.QUEUED),  # the reconciler takes a job back from a vanished worker
}
"""The state machine the README documents: every (from, to) move a job may make; no other."""


def put_in(store: JobStore, status: JobStatus) -> jobstore.Job:
    (job,) = submit(store, "a.png")
    if status is not JobStatus.QUEUED:
        assert store.start(job.id, deadline=time.time() + 60)
    if status is JobStatus.SUCCEEDED:
        assert store.succeed(job.id, {})
    elif status is JobStatus.FAILED:
        assert store.fail(job.id, {"detail": "broken"})
    elif status is JobStatus.CANCELED:
        (job,) = submit(store, "b.png")
        assert store.cancel(job.id)
    return job


def move(store: JobStore, job: jobstore.Job, target: JobStatus) -> bool:
    if target is JobStatus.RUNNING:
        return store.start(job.id, deadline=time.time() + 60) is not None
    if target is JobStatus.SUCCEEDED:
        return store.succeed(job.id, {"n": 2})
    if target is JobStatus.FAILED:
        return store.fail(job.id, {"detail": "late"})
    if target is JobStatus.QUEUED:
        return store.requeue(job.id)
    return store.cancel(job.id)


@pytest.mark.parametrize("target", list(JobStatus))
@pytest.mark.parametrize("current", list(JobStatus))
def test_the_transition_script_makes_exactly_the_documented_moves(store: JobStore, current: JobStatus,
                                                                  target: JobStatus):
    job = put_in(store, current)
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

    store.start(done.id, deadline=time.time() + 60)
    store.succeed(done.id, {})
    store.cancel(canceled.id)

    assert store.get_batch(batch.id).finished == 2 and not store.get_batch(batch.id).done
    assert store.get_batch(batch.id).counts == {JobStatus.QUEUED: 1, JobStatus.RUNNING: 0, JobStatus.SUCCEEDED: 1,
                                                JobStatus.FAILED: 0, JobStatus.CANCELED: 1}
    assert [pubsub.get_message(timeout=1)["data"] for _ in range(2)] == ["succeeded", "canceled"]
    store.fail(waiting.id, {"detail": "broken"})
    assert store.get_batch(batch.id).done
    pubsub.close()
