"""The reconciler on a real Redis, with no worker consuming its database: what each sweep finds and puts right.
(tests/worker/test_healing.py drives it with real processes, through a Redis restart and a dead API.)"""

import time
from collections.abc import Iterator

import pytest
from kombu import Connection
from kombu.exceptions import OperationalError
from redis import Redis

from service import reconciler as reconciler_module
from service.broker import messages_in_broker
from service.dispatch import enqueue_bulk
from service.fairshare import Chunk, FairShare
from service.faults import BROKER_SEND_FAILS, FAULT_FILE_ENV
from service.images import JobImages
from service.jobstore import JobStatus, JobStore, Lane, Upload
from service.keys import RUNNING_REGISTRY, fair_pending_key
from service.queue import BULK_QUEUE, make_celery, send_classify_task
from service.reconciler import Reconciler
from service.settings import Settings
from service.workers import WorkerRegistry
from tests.live_service import UNCONSUMED_REDIS_URL, empty_database

URL = UNCONSUMED_REDIS_URL


@pytest.fixture
def redis() -> Iterator[Redis]:
    with empty_database(URL) as client:
        yield client


@pytest.fixture
def parts(redis: Redis) -> Iterator[tuple[JobStore, WorkerRegistry, Reconciler]]:
    store, workers, fair_share = JobStore(URL, ttl=600), WorkerRegistry(URL), FairShare(URL, ttl=600)
    celery = make_celery(Settings(redis_url=URL))
    reconciler = Reconciler(url=URL, store=store, images=JobImages(store, None, None), workers=workers,
                            fair_share=fair_share, celery=celery, max_batch=16, bulk_chunk=16,
                            sweep_interval=30)
    yield store, workers, reconciler
    for part in (reconciler, fair_share, workers, store):
        part.close()
    celery.close()


def submit(store: JobStore, count: int = 1, **options: object) -> list:
    _, jobs, _ = store.create_batch([Upload(f"{n}.png", b"png bytes") for n in range(count)], **options)
    return jobs


def named_jobs(redis: Redis) -> set[str]:
    return {job_id for message in messages_in_broker(redis) for job_id in message.job_ids}


def lease_runs_out(redis: Redis, store: JobStore, job_id: str) -> None:
    """As if the lease had been granted long ago: its worker is gone (dead, or cut off)."""
    redis.zadd(RUNNING_REGISTRY, {job_id: store.redis_now() - 1})


def test_expired_ids_leave_every_registry(redis: Redis, parts):
    _, _, reconciler = parts
    short = JobStore(URL, ttl=1)
    _, running = submit(short, 2)
    short.claim([running.id], token="run-1", lease=60)
    time.sleep(1.2)  # the records expire; nothing else takes their ids out of the registries

    assert short.queued_count() == 1 and short.running_count() == 1
    assert reconciler.sweep().expired == 2
    assert short.queued_count() == 0 and short.running_count() == 0
    short.close()


def test_a_running_job_whose_lease_is_over_and_that_no_message_names_is_dispatched_again(redis: Redis, parts):
    store, _, reconciler = parts
    (job,) = submit(store)
    store.claim([job.id], token="run-1", lease=60, worker="gone-host:42")  # its task ended without finishing it

    assert reconciler.sweep().requeued == 0  # leased: left alone
    lease_runs_out(redis, store, job.id)
    assert reconciler.sweep().requeued == 1

    requeued = store.get_job(job.id)
    assert requeued.status is JobStatus.QUEUED and requeued.deliveries == 1  # MAX_DELIVERIES still counts it
    assert store.images([job.id]) == [b"png bytes"]
    assert job.id in named_jobs(redis)


def test_a_job_whose_message_the_broker_still_holds_is_left_to_the_broker(redis: Redis, parts):
    """One path after a worker's death: the broker hands its unacknowledged message out again after the visibility
    timeout; the reconciler does not dispatch the job a second time meanwhile."""
    store, _, reconciler = parts
    (job,) = submit(store)
    send_classify_task([job.id], app=make_celery(Settings(redis_url=URL)))
    with Connection(URL, transport="service.broker:Transport") as connection:
        taken = connection.default_channel.basic_get(BULK_QUEUE, no_ack=False)  # taken, and never acknowledged
        assert taken is not None
        store.claim([job.id], token="run-1", lease=60)
        lease_runs_out(redis, store, job.id)  # then its worker died

        assert reconciler.sweep().requeued == 0
        assert store.get_job(job.id).status is JobStatus.RUNNING
        assert [message.job_ids for message in messages_in_broker(redis)] == [[job.id]]


def test_a_queued_job_without_a_task_is_dispatched_in_its_lane(redis: Redis, parts,
                                                               monkeypatch: pytest.MonkeyPatch):
    store, _, reconciler = parts
    monkeypatch.setattr(reconciler_module, "STRANDED_AFTER", 0.2)
    stranded = submit(store, 2, lane=Lane.INTERACTIVE)
    bulk = submit(store, 3, owner="team-a")
    enqueued = submit(store, lane=Lane.INTERACTIVE)
    send_classify_task([enqueued[0].id], app=make_celery(Settings(redis_url=URL)), lane=Lane.INTERACTIVE)
    time.sleep(0.3)

    assert reconciler.sweep().redispatched == 5

    assert {job.id for job in [*stranded, *bulk, *enqueued]} <= named_jobs(redis)
    assert reconciler.sweep().redispatched == 0  # now each has its task: nothing is dispatched twice


def test_bulk_jobs_without_a_task_wait_their_keys_turn(redis: Redis, parts, monkeypatch: pytest.MonkeyPatch):
    store, _, reconciler = parts
    monkeypatch.setattr(reconciler_module, "STRANDED_AFTER", 0.2)
    submit(store, 16 * 5, owner="team-a")  # five chunks; no worker alive: a window of one
    time.sleep(0.3)

    reconciler.sweep()

    assert redis.llen(fair_pending_key("team-a")) == 4
    assert reconciler.sweep().redispatched == 0  # chunks waiting their turn are not stranded


def test_a_chunk_released_and_never_sent_is_put_back_and_its_key_moves_again(redis: Redis, parts,
                                                                             monkeypatch: pytest.MonkeyPatch):
    store, _, reconciler = parts
    monkeypatch.setattr(reconciler_module, "STRANDED_AFTER", 0.2)
    fair_share = FairShare(URL, ttl=600)
    jobs = submit(store, 16 * 3, owner="team-a")
    chunks = [[job.id for job in jobs[start:start + 16]] for start in (0, 16, 32)]
    # Its API released two chunks (two workers were alive then) and died before sending them: the key's window is
    # full, with nothing in the broker.
    fair_share.admit("team-a", [Chunk(id=f"chunk-{n}", job_ids=ids) for n, ids in enumerate(chunks)], window=2)
    assert named_jobs(redis) == set()
    time.sleep(0.3)

    done = reconciler.sweep()

    assert (done.chunks_put_back, done.redispatched) == (2, 0)  # sent again in their turn, not dispatched twice
    assert [message.chunk for message in messages_in_broker(redis)] == ["chunk-0"]  # no worker alive: a window of 1
    assert redis.llen(fair_pending_key("team-a")) == 2
    assert reconciler.sweep() == reconciler_module.Sweep()  # and the books agree now
    fair_share.close()


def test_one_process_of_the_fleet_sweeps_each_interval(parts):
    store, workers, reconciler = parts
    fair_share = FairShare(URL, ttl=600)
    other = Reconciler(url=URL, store=store, images=JobImages(store, None, None), workers=workers,
                       fair_share=fair_share, celery=make_celery(Settings(redis_url=URL)), max_batch=16, bulk_chunk=64,
                       sweep_interval=30)

    assert reconciler.sweep_if_due("worker-1") is not None
    assert other.sweep_if_due("api-1") is None
    assert reconciler.sweep_if_due("worker-1") is None
    other.close()
    fair_share.close()


def test_an_admission_cut_short_keeps_its_jobs_and_frees_its_places(redis: Redis, parts,
                                                                    monkeypatch: pytest.MonkeyPatch):
    store, _, reconciler = parts
    monkeypatch.setattr(reconciler_module, "ADMISSION_STALLED_AFTER", 0.1)
    batch, _ = store.open_batch(total=20, max_queue=20)
    store.add_jobs(batch, [Upload(f"{n}.png", b"png bytes") for n in range(16)], stored_before=0)  # its API died
    time.sleep(0.2)

    reconciler.sweep()

    kept = store.get_batch(batch.id)
    assert (kept.total, kept.interrupted, kept.counts[JobStatus.QUEUED]) == (16, 4, 16)
    assert redis.hlen("pneuradnet:admissions") == 0
    store.open_batch(total=4, max_queue=20)  # the four places it held are free again


def test_a_key_whose_send_failed_holds_nothing_in_flight_and_moves_at_the_next_sweep(
        redis: Redis, parts, tmp_path, monkeypatch: pytest.MonkeyPatch):
    store, _, reconciler = parts
    fair_share = FairShare(URL, ttl=600)
    faults = tmp_path / "faults"
    faults.write_text(BROKER_SEND_FAILS)
    monkeypatch.setenv(FAULT_FILE_ENV, str(faults))
    jobs = submit(store, 48, owner="team-a")

    with pytest.raises(OperationalError):  # the broker refuses the first send
        enqueue_bulk([job.id for job in jobs], owner="team-a", fair_share=fair_share, window=2, chunk_size=16,
                     app=make_celery(Settings(redis_url=URL)))

    assert fair_share.in_flight(["team-a"]) == []  # was: both marked in flight with no task, the key frozen 600 s
    faults.write_text("")
    reconciler.sweep()
    assert [len(message.job_ids) for message in messages_in_broker(redis)] == [16]  # no worker alive: a window of 1
    assert redis.llen(fair_pending_key("team-a")) == 2
    fair_share.close()


def test_a_dicom_study_left_by_its_node_closes_at_a_sweep_once_quiet(redis: Redis, parts):
    from service.studies import StudyGroups

    store, _, reconciler = parts
    node = StudyGroups(URL, store, quiet=0.5)
    batch_id = node.batch_of("1.2.3", owner="dicom:CR1")
    job_id = "job-1"
    node.grow("1.2.3", batch_id, job_id=job_id, image_bytes=3, max_queue=100)
    store.add_jobs(store.get_batch(batch_id), [Upload("1.2.3.4.dcm", b"dcm")], stored_before=-1, job_ids=[job_id])
    node.close()  # the node dies: nothing closes the study but the sweep

    assert reconciler.sweep().studies_closed == 0 and store.get_batch(batch_id).growing  # within its quiet time
    time.sleep(0.6)
    assert reconciler.sweep().studies_closed == 1
    closed = store.get_batch(batch_id)
    assert not closed.growing and closed.total == 1 and closed.interrupted == 0
