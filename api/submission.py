"""Submitting uploads as a batch of jobs and waiting for a job to finish, for the routes."""

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from itertools import islice
from typing import TypeVar

from redis.asyncio import Redis as AsyncRedis
from starlette.concurrency import run_in_threadpool

from api.dispatch import Dispatcher
from api.problems import ProblemError
from api.uploads import UploadPlan
from service.faults import fault_point
from service.jobstore import Batch, IdempotencyConflict, Job, JobStatus, JobStore, Lane, QueueFull
from service.keys import batch_channel, job_channel
from service.logs import job_event
from service.webhooks import Callback

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_RETRY_AFTER = 30
"""Seconds a client is asked to wait when the queue is full."""

QUEUE_RETRY_AFTER = 5
"""Seconds a client is asked to wait when the broker refused the tasks."""


def choose_lane(image_count: int, *, priority: Lane | None, interactive_max: int) -> Lane:
    """The lane of a submission: small ones are interactive unless the client asks for bulk; a large one is bulk
    whatever it asks, so that nobody can put thousands of images ahead of a clinician's single one."""
    if priority is Lane.BULK:
        return Lane.BULK
    if image_count <= interactive_max:
        return Lane.INTERACTIVE
    if priority is Lane.INTERACTIVE:
        raise ProblemError(422, "too-large-for-interactive", f"{image_count} images cannot go to the interactive "
                           f"lane, which takes at most {interactive_max} (INTERACTIVE_MAX_IMAGES): send them with "
                           "priority=bulk, or in smaller submissions")
    return Lane.BULK


async def submit_batch(store: JobStore, dispatcher: Dispatcher, plan: UploadPlan, *, owner: str, max_queue: int,
                       lane: Lane, chunk_size: int, idempotency: str | None = None,
                       explain: bool = False, callback: Callback | None = None) -> tuple[Batch, list[Job]]:
    """Admit a request's images as a batch, a chunk at a time: each chunk is stored, then enqueued, while the next
    is read, so the first chunk runs while the rest is still being admitted.

    Every job is stored before it is enqueued, so a worker never takes a job the store does not know. The batch's
    places in the queue are reserved when it opens, so concurrent submissions never push the queue past MAX_QUEUE.
    """
    fingerprint = await run_in_threadpool(plan.fingerprint, explain=explain) if idempotency is not None else ""
    try:
        batch, created = await run_in_threadpool(partial(
            store.open_batch, total=len(plan.images), owner=owner, idempotency=idempotency, fingerprint=fingerprint,
            explain=explain, lane=lane, max_queue=max_queue, callback=callback))
    except IdempotencyConflict as conflict:
        raise ProblemError(422, "idempotency-conflict", str(conflict)) from conflict
    except QueueFull as full:
        raise ProblemError(429, "queue-full", f"the queue holds {full.queued} jobs and takes at most {full.limit} "
                           "(MAX_QUEUE); nothing of this request was queued: retry later",
                           headers={"Retry-After": str(BUSY_RETRY_AFTER)}) from full
    if not created:
        return batch, await run_in_threadpool(lambda: store.get_jobs(store.batch_job_ids(batch.id)))
    jobs: list[Job] = []
    images = plan.read()
    while chunk := await run_in_threadpool(lambda: list(islice(images, chunk_size))):
        stored = await run_in_threadpool(store.add_jobs, batch, chunk)
        jobs += stored
        fault_point("api-dies-after-store")  # stored and not enqueued: the reconciler's case
        await _enqueue(store, dispatcher, batch, stored, owner=owner, idempotency=idempotency, started=len(jobs))
    await run_in_threadpool(store.close_admission, batch.id)
    for job in jobs:
        job_event(log, "submitted", job.id, batch_id=batch.id, status=job.status.value)
    return batch, jobs


async def _enqueue(store: JobStore, dispatcher: Dispatcher, batch: Batch, jobs: list[Job], *, owner: str,
                   idempotency: str | None, started: int) -> None:
    try:
        await dispatcher.dispatch([job.id for job in jobs if job.status is JobStatus.QUEUED], lane=batch.lane,
                                  owner=owner)
    except Exception as error:
        # Left queued, these jobs would wait for a task that never comes and hold places in MAX_QUEUE.
        log.error("enqueueing batch %s failed, its jobs are withdrawn: %s", batch.id, error)
        await run_in_threadpool(partial(store.withdraw_batch, batch.id, owner=owner, idempotency=idempotency))
        earlier = "nothing of this request was queued" if started == len(jobs) else \
            "the jobs of this request that had not started are canceled"
        raise ProblemError(503, "queue-unavailable", f"the job queue did not take the jobs ({type(error).__name__}), "
                           f"so {earlier}: retry later", headers={"Retry-After": str(QUEUE_RETRY_AFTER)}) from error


async def wait_for_job(store: JobStore, redis: AsyncRedis, job_id: str, *, timeout: float) -> Job | None:
    """The job as soon as it finishes, or as it is when `timeout` seconds have passed."""
    return await _wait(redis, job_channel(job_id), partial(store.get_job, job_id),
                       lambda job: job.status.finished, timeout=timeout)


async def wait_for_batch(store: JobStore, redis: AsyncRedis, batch_id: str, *, timeout: float) -> Batch | None:
    """The batch as soon as all its jobs have finished, or as it is when `timeout` seconds have passed."""
    return await _wait(redis, batch_channel(batch_id), partial(store.get_batch, batch_id),
                       lambda batch: batch.done, timeout=timeout)


async def _wait(redis: AsyncRedis, channel: str, read: Callable[[], T | None], finished: Callable[[T], bool], *,
                timeout: float) -> T | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
        await pubsub.subscribe(channel)
        while True:
            # Read after subscribing: a finish published in between is then seen here, not lost.
            current = await run_in_threadpool(read)
            remaining = deadline - loop.time()
            if current is None or finished(current) or remaining <= 0:
                return current
            await pubsub.get_message(timeout=remaining)
