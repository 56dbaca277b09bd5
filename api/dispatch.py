"""Handing a stored batch's jobs to the broker, by lane.

Interactive jobs go through the enqueue batcher, so that single images arriving together share a forward pass,
to the queue every worker serves first. Bulk jobs are cut into chunks of MAX_BATCH and go through fair share:
the broker gets only the owner's window of them now, and workers release the rest one by one as chunks finish.
"""

from collections.abc import Sequence

from celery import Celery
from starlette.concurrency import run_in_threadpool

from api.batcher import EnqueueBatcher
from service.dispatch import enqueue_bulk
from service.fairshare import FairShare, window_for
from service.jobstore import Lane
from service.workers import WorkerRegistry


class Dispatcher:
    def __init__(self, *, batcher: EnqueueBatcher, fair_share: FairShare, workers: WorkerRegistry, celery: Celery,
                 bulk_chunk: int) -> None:
        self._batcher = batcher
        self._fair_share = fair_share
        self._workers = workers
        self._celery = celery
        self._bulk_chunk = bulk_chunk

    async def dispatch(self, job_ids: Sequence[str], *, lane: Lane, owner: str) -> None:
        """Return once the jobs are with the broker, or waiting their turn in fair share; raise if that failed."""
        if lane is Lane.INTERACTIVE:
            await self._batcher.submit(job_ids)
            return
        await run_in_threadpool(self._enqueue_bulk, job_ids, owner)

    def _enqueue_bulk(self, job_ids: Sequence[str], owner: str) -> None:
        enqueue_bulk(job_ids, owner=owner, fair_share=self._fair_share, window=window_for(self._workers.count()),
                     chunk_size=self._bulk_chunk, app=self._celery)
