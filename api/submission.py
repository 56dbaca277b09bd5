"""Submitting uploads as a batch of jobs and waiting for a job to finish, for the routes."""

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from itertools import islice
from typing import TypeVar

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import OutOfMemoryError
from starlette.concurrency import run_in_threadpool

from api.dispatch import Dispatcher
from api.problems import ProblemError
from api.uploads import UploadPlan
from service.channels import Reports
from service.faults import fault_point
from service.images import JobImages
from service.imagestore import ObjectStoreUnavailable
from service.jobstore import (
    AdmissionClosed,
    Batch,
    IdempotencyConflict,
    IdempotencyInProgress,
    Job,
    JobStatus,
    JobStore,
    Lane,
    QueueFull,
    StoreFull,
    Upload,
)
from service.keys import batch_channel, job_channel
from service.logs import job_event
from service.metrics import count_failures
from service.webhooks import Callback

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_RETRY_AFTER = 30
"""Seconds a client is asked to wait when the queue is full."""

QUEUE_RETRY_AFTER = 5
"""Seconds a client is asked to wait when the broker refused the tasks, or its admission was cut short."""

IN_PROGRESS_RETRY_AFTER = 2
"""Seconds a client is asked to wait when its Idempotency-Key's first request is still being admitted: a
600-image upload is admitted in about a second."""


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


async def submit_batch(store: JobStore, images: JobImages, dispatcher: Dispatcher, plan: UploadPlan, *, owner: str,
                       max_queue: int, lane: Lane, chunk_size: int, task_size: int | None = None,
                       idempotency: str | None = None,
                       explain: bool = False, callback: Callback | None = None,
                       reports: Reports | None = None) -> tuple[Batch, list[Job]]:
    """Admit a request's images as a batch, a chunk at a time: each chunk of `chunk_size` images is stored (the
    API holds one chunk's bytes), and they are enqueued as soon as `task_size` of them (by default a chunk) are
    stored, so the first tasks run while the rest is still being admitted.

    Every job is stored before it is enqueued, so a worker never takes a job the store does not know; its image is
    written first (to Redis, or to the object store). The batch's places in the queue and the bytes it will take in
    Redis are reserved when it opens, so concurrent submissions never push the queue past MAX_QUEUE, nor Redis past
    its byte budget.
    An admission that fails part-way is withdrawn: its jobs not started are canceled and its Idempotency-Key freed,
    so that the client's retry submits the whole upload anew.
    """
    fingerprint = await run_in_threadpool(plan.fingerprint, explain=explain) if idempotency is not None else ""
    try:
        batch, created = await run_in_threadpool(partial(
            store.open_batch, total=len(plan.images), owner=owner, idempotency=idempotency, fingerprint=fingerprint,
            explain=explain, lane=lane, max_queue=max_queue, callback=callback, reports=reports,
            image_bytes=sum(image.size for image in plan.images) if images.in_redis else 0))
    except IdempotencyConflict as conflict:
        raise ProblemError(422, "idempotency-conflict", str(conflict)) from conflict
    except IdempotencyInProgress as in_progress:
        raise ProblemError(409, "idempotency-in-progress", f"the first request with this Idempotency-Key is still "
                           f"being admitted (batch {in_progress.batch_id}): retry it when that one has been answered",
                           headers={"Retry-After": str(IN_PROGRESS_RETRY_AFTER)}) from in_progress
    except QueueFull as full:
        raise ProblemError(429, "queue-full", f"the queue holds {full.queued} jobs and takes at most {full.limit} "
                           "(MAX_QUEUE); nothing of this request was queued: retry later",
                           headers={"Retry-After": str(BUSY_RETRY_AFTER)}) from full
    except StoreFull as full:
        raise _store_full(f"{full}; this request needs more") from full
    if not created:
        return batch, await run_in_threadpool(lambda: store.get_jobs(store.batch_job_ids(batch.id)))
    jobs: list[Job] = []
    enqueued = 0
    try:
        uploads = plan.read()
        while chunk := await run_in_threadpool(lambda: list(islice(uploads, chunk_size))):
            jobs += await run_in_threadpool(_store_chunk, store, images, batch, chunk, len(jobs))
            fault_point("api-dies-after-store")  # stored and not enqueued: the reconciler's case
            if len(jobs) - enqueued >= (task_size or chunk_size):
                enqueued = await _enqueue(dispatcher, jobs, enqueued, lane=batch.lane, owner=owner)
        enqueued = await _enqueue(dispatcher, jobs, enqueued, lane=batch.lane, owner=owner)
        await run_in_threadpool(store.close_admission, batch.id)
    except BaseException as error:
        await _withdraw(store, batch)
        raise _admission_failed(error, batch, enqueued=enqueued) from error
    for job in jobs:
        job_event(log, "submitted", job.id, batch_id=batch.id, status=job.status.value)
    return batch, jobs


async def _enqueue(dispatcher: Dispatcher, jobs: list[Job], enqueued: int, *, lane: Lane, owner: str) -> int:
    """Enqueue the jobs stored since the first `enqueued` (those still queued); how many are enqueued now."""
    waiting = [job.id for job in jobs[enqueued:] if job.status is JobStatus.QUEUED]
    if waiting:
        try:
            await dispatcher.dispatch(waiting, lane=lane, owner=owner)
        except Exception as error:
            raise QueueRefused(error) from error
    return len(jobs)


async def _withdraw(store: JobStore, batch: Batch) -> None:
    """Cancel what was admitted of a failed admission and free its key; if Redis does not answer, the reconciler
    closes the admission when it stalls, which frees the key too."""
    try:
        await run_in_threadpool(store.withdraw_batch, batch.id)
    except Exception as error:
        log.warning("batch %s could not be withdrawn (%s): the reconciler will close its admission", batch.id, error)


def _admission_failed(error: BaseException, batch: Batch, *, enqueued: int) -> BaseException:
    """What the client is told of an admission that failed part-way: the problem, or the error itself when it is
    already one (the Redis errors become 503 store-unavailable, anything else 500 internal-error)."""
    earlier = "nothing of this request was queued" if enqueued == 0 else \
        "the jobs of this request that had not started are canceled"
    if isinstance(error, AdmissionClosed):
        log.error("the admission of batch %s was closed before it ended: %s", batch.id, error)
        return ProblemError(503, "admission-interrupted", f"{error}; {earlier}: send the request again",
                            headers={"Retry-After": str(QUEUE_RETRY_AFTER)})
    if isinstance(error, ObjectStoreUnavailable):
        return ProblemError(503, "image-store-unavailable", f"the images could not be written to the object store "
                            f"({error}), so {earlier}: retry later", headers={"Retry-After": str(QUEUE_RETRY_AFTER)})
    if isinstance(error, OutOfMemoryError):
        return _store_full(f"Redis is full (its maxmemory), so {earlier}")
    if isinstance(error, QueueRefused):
        log.error("enqueueing batch %s failed, its jobs are withdrawn: %s", batch.id, error.__cause__)
        return ProblemError(503, "queue-unavailable", f"the job queue did not take the jobs "
                            f"({type(error.__cause__).__name__}), so {earlier}: retry later",
                            headers={"Retry-After": str(QUEUE_RETRY_AFTER)})
    return error


def _store_chunk(store: JobStore, images: JobImages, batch: Batch, chunk: list[Upload],
                 stored_before: int) -> list[Job]:
    """Write a chunk's images where they wait, then store its jobs; blocking. If the jobs are refused (the admission
    was closed), the images written for them are due for deletion at once."""
    kept = images.keep(batch.id, stored_before, chunk)
    try:
        jobs = store.add_jobs(batch, kept, stored_before=stored_before)
    except AdmissionClosed:
        store.owned_images_now_due([upload.location for upload in kept if upload.owned])
        raise
    count_failures(store, [upload.error for upload in kept if upload.error is not None])  # stored failed
    return jobs


def _store_full(why: str) -> ProblemError:
    return ProblemError(429, "store-full", f"{why}: nothing of this request was kept; retry when the queue has "
                        "drained (or send images by reference, which take no room in Redis)",
                        headers={"Retry-After": str(BUSY_RETRY_AFTER)})


class QueueRefused(Exception):
    """The broker did not take a chunk's task (its cause says why)."""


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
            if await pubsub.get_message(timeout=remaining):
                # A forward pass finishes its jobs together: one read for all that has arrived, not one per job.
                while await pubsub.get_message(timeout=0):
                    pass
