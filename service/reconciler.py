"""The reconciler: the job store is the source of truth, and this keeps the queue's books true to it.

Nothing else has to be right for a job to finish: a Redis restart that loses a message, an API that dies between
storing a batch and enqueueing it, a worker cut off by the network, records that expire. Every SWEEP_INTERVAL one
process of the fleet (workers and APIs take turns through a lock in Redis; no extra process to run) sweeps:

1. **Expired.** Ids whose records have expired leave every registry, so MAX_QUEUE and the gauges count only
   jobs that exist.
2. **Running past its deadline.** A job still `running` RUNNING_MARGIN after its deadline, whose worker is gone
   or no longer works on it, is queued again and dispatched; a job handed out MAX_DELIVERIES times fails as
   `worker-lost` when a worker next takes it (worker/processing.py).
3. **Admission cut short.** A batch whose API died while it was storing the upload's images keeps the jobs it
   has (its total becomes theirs, so it can finish) and frees the places it had reserved in the queue.
4. **Never dispatched.** A job `queued` for STRANDED_AFTER with no task on the broker naming it, and not waiting
   its key's turn in fair share, is dispatched again.
5. **Callbacks.** A batch's callback due for RESEND_AFTER with nothing done about it (its task was lost, its
   worker died mid-request, or its retry is too far off to wait on the broker) gets a delivery task
   (service/deliveries.py); of the tasks sent for one attempt, one makes it.

Dispatching twice is harmless: a job runs only from `queued` (or again after its worker died), and the state
machine refuses a second result.
"""

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery

from service.connections import connect
from service.deliveries import Deliveries
from service.fairshare import FairShare, window_for
from service.jobstore import Job, JobStore, Lane
from service.queue import (
    HARD_LIMIT_MARGIN,
    enqueue_bulk,
    job_ids_in_broker,
    send_classify_task,
    send_delivery_task,
)
from service.workers import WorkerRegistry

log = logging.getLogger(__name__)

RUNNING_MARGIN = HARD_LIMIT_MARGIN + 5
"""Seconds past a running job's deadline before the reconciler takes it back: by then its task has been stopped by
the hard time limit if its worker is alive, so a job still running is one whose worker is gone."""

ADMISSION_STALLED_AFTER = 30.0
"""Seconds a batch being admitted may store nothing before its admission is taken for dead (its API died): an
API stores a chunk every few milliseconds while it reads an upload."""

STRANDED_AFTER = 5.0
"""Seconds a queued job may go without a task on the broker: far longer than an API takes from storing a batch
to enqueueing it (milliseconds, and BATCH_WAIT_MS)."""


@dataclass(frozen=True)
class Sweep:
    """What one sweep did."""

    expired: int = 0
    """Ids of expired records taken out of the registries."""
    requeued: int = 0
    """Running jobs taken back from a vanished worker and dispatched again."""
    redispatched: int = 0
    """Queued jobs that had no task, dispatched again."""
    callbacks: int = 0
    """Callback delivery tasks sent for deliveries overdue."""


class Reconciler:
    def __init__(self, *, url: str, store: JobStore, workers: WorkerRegistry, fair_share: FairShare,
                 celery: Celery, max_batch: int, sweep_interval: float) -> None:
        self._broker = connect(url)
        self._store = store
        self._workers = workers
        self._fair_share = fair_share
        self._celery = celery
        self._max_batch = max_batch
        self._interval = sweep_interval
        self._deliveries = Deliveries(url)

    def close(self) -> None:
        self._broker.close()
        self._deliveries.close()

    def sweep_if_due(self, sweeper: str) -> Sweep | None:
        """Sweep if it is this process's turn (at most one sweep a SWEEP_INTERVAL in the whole fleet)."""
        if not self._store.take_sweep_turn(sweeper, interval=self._interval):
            return None
        done = self.sweep()
        if done != Sweep():
            log.warning("reconciled the queue: %d expired ids forgotten, %d jobs of vanished workers requeued, "
                        "%d jobs without a task dispatched again, %d callbacks sent again", done.expired, done.requeued,
                        done.redispatched, done.callbacks)
        return done

    def sweep(self) -> Sweep:
        expired = self._store.forget_expired()
        now = time.time()
        for batch_id in self._store.stalled_admissions(idle_since=now - ADMISSION_STALLED_AFTER):
            self._store.close_admission(batch_id)  # frees the places it reserved; the batch keeps what it has
        abandoned = [job for job in self._store.running_past(now - RUNNING_MARGIN)
                     if not self._workers.holds(job.worker, job.id) and self._store.requeue(job.id)]
        stranded = self._stranded(now)
        self._dispatch([*abandoned, *stranded])
        overdue = self._deliveries.overdue()
        for batch_id, attempts in overdue.items():
            send_delivery_task(batch_id, attempts, app=self._celery)
        return Sweep(expired=expired, requeued=len(abandoned), redispatched=len(stranded), callbacks=len(overdue))

    def _stranded(self, now: float) -> list[Job]:
        waiting = self._store.queued_since(now - STRANDED_AFTER)
        if not waiting:
            return []
        # Read after the registries: a task sent in between is then seen here, never taken for missing.
        known = job_ids_in_broker(self._broker) | self._fair_share.pending_job_ids()
        return [job for job in waiting if job.id not in known]

    def _dispatch(self, jobs: Sequence[Job]) -> None:
        """Enqueue the jobs as their lanes do: interactive ones at once, bulk ones through their owner's fair share."""
        bulk: dict[str, list[str]] = defaultdict(list)
        interactive = []
        for job in jobs:
            if job.lane is Lane.INTERACTIVE:
                interactive.append(job.id)
            else:
                bulk[job.owner].append(job.id)
        for start in range(0, len(interactive), self._max_batch):
            send_classify_task(interactive[start:start + self._max_batch], app=self._celery, lane=Lane.INTERACTIVE)
        window = window_for(self._workers.count())
        for owner, job_ids in bulk.items():
            enqueue_bulk(job_ids, owner=owner, fair_share=self._fair_share, window=window, max_batch=self._max_batch,
                         app=self._celery)
