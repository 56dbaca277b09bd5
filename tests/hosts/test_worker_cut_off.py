"""A worker on another host cut off silently mid-bulk: its jobs are handed to the worker that can still reach Redis
and each succeeds exactly once; once the network heals, the cut-off worker takes new work again.

The cut is iptables DROP inside the worker's namespace, both ways: no reset, no ICMP error, the worker's sockets
simply stop hearing back, as behind a partition or a firewall that times a connection out.
"""

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from redis import Redis
from redis.client import PubSub

from service.jobstore import Job, JobStatus, JobStore, Upload
from service.queue import (
    HARD_LIMIT_MARGIN,
    LEASE_MARGIN,
    RESTORE_INTERVAL,
    VISIBILITY_MARGIN,
    make_celery,
    send_classify_task,
)
from service.settings import Settings
from tests.hosts.network import Namespace
from tests.hosts.services import Processes, RedisServer, service_env
from tests.processes import forward_passes, wait_until

pytestmark = [pytest.mark.hosts, pytest.mark.model]

JOB_TIMEOUT = 5
SWEEP_INTERVAL = 2
MAX_BATCH = 4
"""Small tasks: each runs well within JOB_TIMEOUT on a busy machine, and the cut-off worker holds only a few jobs."""
SETTINGS = {"JOB_TIMEOUT": str(JOB_TIMEOUT), "SWEEP_INTERVAL": str(SWEEP_INTERVAL), "MAX_BATCH": str(MAX_BATCH),
            "WORKER_THREADS": "1"}
VISIBILITY_TIMEOUT = JOB_TIMEOUT + VISIBILITY_MARGIN

RECONCILER_TAKES_BACK = JOB_TIMEOUT + HARD_LIMIT_MARGIN + LEASE_MARGIN + SWEEP_INTERVAL
"""Seconds after the cut by which the reconciler has queued again the cut-off worker's running jobs that no message
names: their lease is over (it began before the cut), at the next sweep."""
BROKER_RESTORES = VISIBILITY_TIMEOUT + RESTORE_INTERVAL
"""Seconds after the cut by which the broker has handed out again any task the cut-off worker took: its visibility
timeout, counted from when the worker took it (before the cut), found at the next restore sweep."""
REDELIVERED_WITHIN = max(RECONCILER_TAKES_BACK, BROKER_RESTORES) + 2 * JOB_TIMEOUT
"""The bound on every job having succeeded after the cut: the later of the two routes, then the surviving worker
finishing the task it is on and the redelivered one (each at most JOB_TIMEOUT)."""
HEALED_WITHIN = 60
"""Seconds after the heal by which the cut-off worker has run new jobs: generous, as kombu may back off up to 30 s
between reconnections; measured 2-3 s (the worker retries every CONNECT_TIMEOUT through the cut, then a task takes
a fraction of a second)."""

BULK_IMAGES = 64
NEW_IMAGES = 8


def submit(store: JobStore, redis_url: str, radiographs: list[Path], count: int) -> list[Job]:
    """`count` radiographs as one bulk batch, enqueued in tasks of MAX_BATCH jobs as the API does."""
    uploads = [Upload(f"{n}-{radiographs[n % len(radiographs)].name}", radiographs[n % len(radiographs)].read_bytes())
               for n in range(count)]
    _, jobs, _ = store.create_batch(uploads)
    celery = make_celery(Settings(redis_url=redis_url))
    for start in range(0, len(jobs), MAX_BATCH):
        send_classify_task([job.id for job in jobs[start:start + MAX_BATCH]], app=celery)
    return jobs


def pid_of(job: Job) -> int:
    """The model process that last took the job (its `worker` is host:pid; the namespaces share the host's name)."""
    return int(job.worker.rsplit(":", 1)[1]) if job.worker else 0


def all_succeeded(store: JobStore, jobs: list[Job]) -> Callable[[], bool]:
    return lambda: all(job.status is JobStatus.SUCCEEDED for job in store.get_jobs([job.id for job in jobs]))


def succeeded_events(events: PubSub) -> list[str]:
    """The channels of the `succeeded` events published so far (read until the connection is quiet for 1 s)."""
    channels, quiet_since = [], time.monotonic()
    while time.monotonic() - quiet_since < 1:
        if message := events.get_message(timeout=0.1):
            if message["data"] == "succeeded":
                channels.append(message["channel"])
            quiet_since = time.monotonic()
    return channels


@pytest.mark.parametrize("run", [1, 2, 3])
def test_a_worker_cut_off_mid_bulk_loses_nothing_duplicates_nothing_and_works_again_once_healed(
        run: int, make_namespace: Callable[[], Namespace], make_redis: Callable[..., RedisServer], processes: Processes,
        radiographs: list[Path], tmp_path: Path, record_property: Callable[[str, object], None]):
    other_host = make_namespace()
    redis = make_redis(other_host)
    _, near_worker = processes.start_workers(lambda place: service_env(redis.url(place), SETTINGS),
                                                      other_host, None)
    store = JobStore(redis.url(), ttl=600)
    events = Redis.from_url(redis.url(), decode_responses=True).pubsub(ignore_subscribe_messages=True)
    events.psubscribe("pneuradnet:job:*:events")
    try:
        far_pids = set(other_host.pids())
        bulk = submit(store, redis.url(), radiographs, BULK_IMAGES)

        def far_worker_running() -> list[Job]:
            return [job for job in store.get_jobs([job.id for job in bulk])
                    if job.status is JobStatus.RUNNING and pid_of(job) in far_pids]

        wait_until(lambda: bool(far_worker_running()), timeout=60, interval=0.01,
                   what="the far worker to run some of the bulk")
        other_host.cut()
        cut_at = time.monotonic()
        time.sleep(0.5)  # what the far worker had sent before the cut has arrived
        held = far_worker_running()
        assert held, "the far worker finished its task before the cut: the run proves nothing"

        wait_until(all_succeeded(store, held), timeout=REDELIVERED_WITHIN, what="the held jobs to be redelivered")
        held_redone = time.monotonic() - cut_at
        wait_until(all_succeeded(store, bulk), timeout=REDELIVERED_WITHIN, what="the whole bulk to succeed")
        bulk_done = time.monotonic() - cut_at

        other_host.heal()
        healed_at = time.monotonic()
        processes.stop(near_worker)
        later = submit(store, redis.url(), radiographs, NEW_IMAGES)
        submitted_at = time.monotonic()
        wait_until(all_succeeded(store, later), timeout=HEALED_WITHIN, what="the healed worker to run new jobs")
        healed_runs, new_jobs_took = time.monotonic() - healed_at, time.monotonic() - submitted_at
        far_pids = set(other_host.pids())  # its model process may have been replaced meanwhile
        assert all(pid_of(job) in far_pids for job in store.get_jobs([job.id for job in later]))

        channels = succeeded_events(events)
        for job in bulk + later:
            assert channels.count(f"pneuradnet:job:{job.id}:events") == 1, f"job {job.id} did not succeed once"
        assert store.metrics()["jobs_succeeded"] == BULK_IMAGES + NEW_IMAGES
        # The cut-off worker's own task, handed back once it heard Redis again, ran nothing a second time.
        assert all(job.deliveries == 2 for job in store.get_jobs([job.id for job in held]))
        assert store.running_count() == 0
        # The work done: at most the chunk the cut-off worker held was classified twice (it may have run its
        # forward pass before the cut, and could not store the results).
        passes = forward_passes(*processes.worker_logs())
        assert BULK_IMAGES + NEW_IMAGES <= passes <= BULK_IMAGES + NEW_IMAGES + MAX_BATCH, passes
    finally:
        other_host.heal()  # a worker that hears Redis again stops at once when the fixture stops it
        events.close()
        store.close()

    figures = {"held_jobs": len(held), "held_jobs_succeeded_after_cut_s": round(held_redone, 1),
               "bulk_succeeded_after_cut_s": round(bulk_done, 1), "healed_worker_ran_new_jobs_after_s":
               round(healed_runs, 1), "new_jobs_took_s": round(new_jobs_took, 1)}
    for name, value in figures.items():
        record_property(name, value)
    print(f"run {run}: {figures}")
