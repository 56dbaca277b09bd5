"""Submitting uploads as a batch of jobs and waiting for a job to finish, for the routes."""

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from redis.asyncio import Redis as AsyncRedis
from starlette.concurrency import run_in_threadpool

from api.batcher import EnqueueBatcher
from api.problems import ProblemError
from service.jobstore import Batch, IdempotencyConflict, Job, JobStore, Upload
from service.keys import batch_channel, job_channel
from service.logs import job_event

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_RETRY_AFTER = 30
"""Seconds a client is asked to wait when the queue is full."""

QUEUE_RETRY_AFTER = 5
"""Seconds a client is asked to wait when the broker refused the tasks."""


async def submit_batch(store: JobStore, batcher: EnqueueBatcher, uploads: list[Upload], *, owner: str,
                       max_queue: int, idempotency: str | None = None,
                       explain: bool = False) -> tuple[Batch, list[Job]]:
    """Store every job before any is enqueued, so a worker never takes a job the store does not know."""
    queued = await run_in_threadpool(store.queued_count)
    if queued + len(uploads) > max_queue:
        raise ProblemError(429, "queue-full", f"the queue holds {queued} jobs and takes at most {max_queue} "
                           "(MAX_QUEUE); nothing of this request was queued: retry later",
                           headers={"Retry-After": str(BUSY_RETRY_AFTER)})
    try:
        batch, jobs, created = await run_in_threadpool(
            partial(store.create_batch, uploads, owner=owner, idempotency=idempotency, explain=explain))
    except IdempotencyConflict as conflict:
        raise ProblemError(422, "idempotency-conflict", str(conflict)) from conflict
    if created:
        try:
            await batcher.submit([job.id for job in jobs])
        except Exception as error:
            # Left queued, these jobs would wait for a task that never comes and hold places in MAX_QUEUE.
            log.error("enqueueing batch %s failed, its %d jobs are withdrawn: %s", batch.id, len(jobs), error)
            await run_in_threadpool(partial(store.withdraw_batch, batch.id, owner=owner, idempotency=idempotency))
            raise ProblemError(503, "queue-unavailable", "the job queue did not take the jobs "
                               f"({type(error).__name__}), so nothing of this request was queued: retry later",
                               headers={"Retry-After": str(QUEUE_RETRY_AFTER)}) from error
        for job in jobs:
            job_event(log, "submitted", job.id, batch_id=batch.id, status="queued")
    return batch, jobs


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
