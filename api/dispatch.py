"""Handing a stored batch's jobs to the broker, by lane.

Interactive jobs go through the enqueue batcher, so that single images arriving together share a forward pass,
to the queue every worker serves first. Bulk jobs are cut into chunks of MAX_BATCH and go through fair share:
the broker gets only the owner's window of them now, and workers release the rest one by one as chunks finish.
"""

import uuid
from collections.abc import Callable, Sequence

from starlette.concurrency import run_in_threadpool

from api.batcher import EnqueueBatcher
from service.fairshare import Chunk, FairShare, window_for
from service.jobstore import Lane
from service.workers import WorkerRegistry

SendChunks = Callable[[Sequence[Chunk], str], None]
"""Sends an owner's released chunks to the bulk queue (service.queue.send_bulk_chunks, bound to a broker)."""


class Dispatcher:
    def __init__(self, *, batcher: EnqueueBatcher, fair_share: FairShare, workers: WorkerRegistry,
                 send_chunks: SendChunks, max_batch: int) -> None:
        self._batcher = batcher
        self._fair_share = fair_share
        self._workers = workers
        self._send_chunks = send_chunks
        self._max_batch = max_batch

    async def dispatch(self, job_ids: Sequence[str], *, lane: Lane, owner: str) -> None:
        """Return once the jobs are with the broker, or waiting their turn in fair share; raise if that failed."""
        if lane is Lane.INTERACTIVE:
            await self._batcher.submit(job_ids)
            return
        chunks = [Chunk(id=str(uuid.uuid4()), job_ids=list(job_ids[start:start + self._max_batch]))
                  for start in range(0, len(job_ids), self._max_batch)]
        await run_in_threadpool(self._admit, chunks, owner)

    def _admit(self, chunks: list[Chunk], owner: str) -> None:
        released = self._fair_share.admit(owner, chunks, window=window_for(self._workers.count()))
        self._send_chunks(released, owner)
