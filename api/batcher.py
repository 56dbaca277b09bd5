"""Coalescing jobs submitted close together into shared tasks, so that concurrent single-image requests
reach a worker as one batch instead of many batches of one.

A batch forms against a deadline: the first waiting submission starts a BATCH_WAIT_MS window, which closes
early once MAX_BATCH jobs are waiting. Every submission awaits its own future, which carries the enqueue's
outcome: if sending fails, every waiter gets the error and none hangs.
"""

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool


@dataclass
class _Submission:
    job_ids: Sequence[str]
    enqueued: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class EnqueueBatcher:
    def __init__(self, send: Callable[[list[str]], None], *, max_batch: int, wait_seconds: float) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if wait_seconds < 0:
            raise ValueError(f"wait_seconds must not be negative, got {wait_seconds}")
        self._send = send
        self._max_batch = max_batch
        self._wait_seconds = wait_seconds
        # Only coroutines on the API's one event loop touch the queue, so it needs no lock.
        self._queue: asyncio.Queue[_Submission] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="enqueue-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # Anything submitted after the last flush is sent now, not dropped.
        leftover = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        if leftover:
            await self._flush(leftover)

    async def submit(self, job_ids: Sequence[str]) -> None:
        """Return once the jobs are enqueued (at most BATCH_WAIT_MS later); raise if enqueueing failed."""
        submission = _Submission(job_ids)
        await self._queue.put(submission)
        await submission.enqueued

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self._queue.get()]
            deadline = loop.time() + self._wait_seconds
            while sum(len(s.job_ids) for s in waiting) < self._max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    waiting.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            await self._flush(waiting)

    async def _flush(self, waiting: list[_Submission]) -> None:
        job_ids = [job_id for submission in waiting for job_id in submission.job_ids]
        try:
            for start in range(0, len(job_ids), self._max_batch):
                await run_in_threadpool(self._send, job_ids[start:start + self._max_batch])
        except Exception as error:
            for submission in waiting:
                if not submission.enqueued.done():
                    submission.enqueued.set_exception(error)
            return
        for submission in waiting:
            if not submission.enqueued.done():
                submission.enqueued.set_result(None)
