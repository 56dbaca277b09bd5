import asyncio
import time

import pytest

from api.batcher import EnqueueBatcher


class Recorder:
    """The tasks a batcher would enqueue, in order."""

    def __init__(self, fail: bool = False) -> None:
        self.tasks: list[list[str]] = []
        self.fail = fail

    def __call__(self, job_ids: list[str]) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.tasks.append(job_ids)


async def running(recorder: Recorder, *, max_batch: int = 16, wait_seconds: float = 0.05) -> EnqueueBatcher:
    batcher = EnqueueBatcher(recorder, max_batch=max_batch, wait_seconds=wait_seconds)
    batcher.start()
    return batcher


async def test_concurrent_single_jobs_share_one_task():
    recorder = Recorder()
    batcher = await running(recorder)

    await asyncio.gather(*(batcher.submit([f"job-{n}"]) for n in range(3)))

    assert recorder.tasks == [["job-0", "job-1", "job-2"]]
    await batcher.stop()


async def test_a_lone_job_waits_no_longer_than_the_window():
    recorder = Recorder()
    batcher = await running(recorder, wait_seconds=0.2)

    started = time.monotonic()
    await batcher.submit(["alone"])
    waited = time.monotonic() - started

    assert recorder.tasks == [["alone"]]
    assert 0.15 <= waited < 0.6
    await batcher.stop()


async def test_a_bulk_upload_is_sent_at_once_in_full_tasks():
    recorder = Recorder()
    batcher = await running(recorder, wait_seconds=5)

    started = time.monotonic()
    await batcher.submit([f"job-{n}" for n in range(40)])

    assert time.monotonic() - started < 1
    assert [len(task) for task in recorder.tasks] == [16, 16, 8]
    assert [job for task in recorder.tasks for job in task] == [f"job-{n}" for n in range(40)]
    await batcher.stop()


async def test_every_waiter_gets_the_enqueue_error():
    batcher = await running(Recorder(fail=True))

    outcomes = await asyncio.gather(batcher.submit(["a"]), batcher.submit(["b"]), return_exceptions=True)

    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    await batcher.stop()


def test_settings_are_checked_when_declared():
    with pytest.raises(ValueError, match="max_batch must be at least 1, got 0"):
        EnqueueBatcher(Recorder(), max_batch=0, wait_seconds=0.01)
    with pytest.raises(ValueError, match="wait_seconds must not be negative, got -1"):
        EnqueueBatcher(Recorder(), max_batch=4, wait_seconds=-1)
