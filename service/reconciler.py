"""The reconciler: the job store is the source of truth, and this keeps the queue's books true to it.

Nothing else has to be right for a job to finish: a Redis restart that loses a message, an API that dies between
storing a batch and enqueueing it, a worker cut off by the network, a task that fails, records that expire. Every
SWEEP_INTERVAL one process of the fleet (workers and APIs take turns through a lock in Redis; no extra process to
run) sweeps:

1. **Expired.** Ids whose records have expired leave every registry, so MAX_QUEUE and the gauges count only
   jobs that exist.
2. **Admission cut short.** A batch whose API died while it was storing the upload's images keeps the jobs it
   has (its total becomes theirs, so it can finish), frees the places it had reserved in the queue, and frees its
   idempotency key.
3. **Chunks lost.** A bulk chunk released by fair share more than STRANDED_AFTER ago that no message on the broker
   names (its sender died before sending it, or Redis lost the message) goes back to its key's pending list, so
   that it is released and sent again and holds no place in the key's window meanwhile.
4. **Leases over, no message.** A running job whose lease is over (its worker is gone) is the broker's to hand
   out again while a message naming it is still there, unacknowledged: the broker restores it after the
   visibility timeout, which ends after the lease. Only a job no message names (its task failed, or Redis lost the
   message) is queued again here and dispatched. One path each, never both; and a job leased to a claim is
   claimed by no other, so a job dispatched twice still runs once.
5. **Never dispatched.** A job `queued` for STRANDED_AFTER with no message naming it, and not in any of its key's
   chunks in fair share, is dispatched again.
6. **Keys stalled.** A key with chunks pending and room in its window (its chunks in flight were lost, or their
   sends failed) releases them.
7. **Images done with.** The images the service wrote to the object store whose jobs finished or expired, and that
   their worker did not delete (it died, or the store did not answer), are deleted (service/images.py).
8. **DICOM studies.** A study no instance came for in DICOM_STUDY_TIMEOUT has its batch's admission closed, as
   the nodes do (service/studies.py): here for when no node is left to.
9. **Callbacks and reports.** A batch's callback or report (each channel of service/channels.py) due for
   RESEND_AFTER with nothing done about it (its task was lost, its worker died mid-request, or its retry is too far
   off to wait on the broker) gets a delivery task (service/deliveries.py); of the tasks sent for one attempt, one
   makes it.

Every time compared is Redis' own (`TIME`), never this host's: the processes that wrote them run on other hosts.
"""

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery

from service.broker import messages_in_broker
from service.channels import Channel
from service.connections import connect
from service.deliveries import Deliveries
from service.dispatch import enqueue_bulk, send_bulk_chunks
from service.fairshare import FairShare, window_for
from service.images import JobImages
from service.imagestore import ObjectStoreUnavailable
from service.jobstore import Job, JobStatus, JobStore, Lane
from service.queue import send_classify_task, send_delivery_task
from service.studies import StudyGroups
from service.workers import WorkerRegistry

log = logging.getLogger(__name__)

ADMISSION_STALLED_AFTER = 30.0
"""Seconds a batch being admitted may store nothing before its admission is taken for dead (its API died): an
API stores a chunk every few milliseconds while it reads an upload."""

STRANDED_AFTER = 5.0
"""Seconds a queued job, or a released chunk, may go without a message on the broker: far longer than an API or a
worker takes from storing or releasing it to sending its task (milliseconds, and BATCH_WAIT_MS)."""


@dataclass(frozen=True)
class Sweep:
    """What one sweep did."""

    expired: int = 0
    """Ids of expired records taken out of the registries."""
    chunks_put_back: int = 0
    """Bulk chunks released and never sent, put back in their key's turn."""
    requeued: int = 0
    """Running jobs whose lease was over and that no message named, dispatched again."""
    redispatched: int = 0
    """Queued jobs that had no task, dispatched again."""
    images_deleted: int = 0
    """Images the service wrote to the object store, deleted because their jobs finished or expired."""
    callbacks: int = 0
    """Delivery tasks (callbacks and reports) sent for deliveries overdue."""
    studies_closed: int = 0
    """DICOM studies quiet for their timeout whose batch's admission was closed."""


class Reconciler:
    def __init__(self, *, url: str, store: JobStore, images: JobImages, workers: WorkerRegistry,
                 fair_share: FairShare, celery: Celery, max_batch: int, bulk_chunk: int,
                 sweep_interval: float) -> None:
        self._broker = connect(url)
        self._store = store
        self._images = images
        self._workers = workers
        self._fair_share = fair_share
        self._celery = celery
        self._max_batch = max_batch
        self._bulk_chunk = bulk_chunk
        self._interval = sweep_interval
        self._deliveries = Deliveries(url)
        self._studies = StudyGroups(url, store)

    def close(self) -> None:
        self._broker.close()
        self._deliveries.close()
        self._studies.close()

    def sweep_if_due(self, sweeper: str) -> Sweep | None:
        """Sweep if it is this process's turn (at most one sweep a SWEEP_INTERVAL in the whole fleet)."""
        if not self._store.take_sweep_turn(sweeper, interval=self._interval):
            return None
        done = self.sweep()
        if done != Sweep():
            log.warning("reconciled the queue: %d expired ids forgotten, %d lost chunks put back, %d jobs of vanished "
                        "workers requeued, %d jobs without a task dispatched again, %d images deleted, %d callbacks "
                        "sent again, %d quiet DICOM studies closed", done.expired, done.chunks_put_back, done.requeued,
                        done.redispatched, done.images_deleted, done.callbacks, done.studies_closed)
        return done

    def sweep(self) -> Sweep:
        expired = self._store.forget_expired()
        for batch_id in self._store.stalled_admissions(idle_for=ADMISSION_STALLED_AFTER):
            self._store.close_admission(batch_id)  # frees the places it reserved; the batch keeps what it has
        studies_closed = len(self._studies.close_quiet())
        # The order of the reads matters: the job store's registries, then fair share, then the broker. A job or
        # chunk that moves on meanwhile (released, then sent) is then seen at its later place, never at none.
        leases_over = self._store.leases_over()
        waiting = self._store.queued_ids_for(STRANDED_AFTER)
        owners = self._fair_share.owners()
        pending = self._fair_share.pending_job_ids(owners)
        in_flight = self._fair_share.in_flight(owners)
        messages = messages_in_broker(self._broker)
        named_jobs = {job_id for message in messages for job_id in message.job_ids}
        named_chunks = {message.chunk for message in messages if message.chunk}

        lost_before = self._store.redis_now() - STRANDED_AFTER
        lost: dict[str, list[str]] = defaultdict(list)  # each key's, in the order they were released
        for chunk in in_flight:
            if chunk.chunk.id not in named_chunks and chunk.released_at < lost_before:
                lost[chunk.owner].append(chunk.chunk.id)
        put_back = sum(self._fair_share.put_back(owner, chunk_ids, released_before=lost_before)
                       for owner, chunk_ids in lost.items())
        in_chunks = {job_id for chunk in in_flight for job_id in chunk.chunk.job_ids}  # the lost ones are pending now
        abandoned = [job for job in leases_over
                     if job.id not in named_jobs and self._store.requeue_abandoned(job.id)]
        placed = named_jobs | pending | in_chunks
        # Only the others' records are read: a bulk of 100,000 images is queued, and almost all of it has a place.
        stranded = [job for job in self._store.get_jobs([job_id for job_id in waiting if job_id not in placed])
                    if job.status is JobStatus.QUEUED]
        self._dispatch([*abandoned, *stranded])
        self._release_stalled(owners)

        images_deleted = self._discard_images()
        resent = 0
        for channel in Channel:
            overdue = self._deliveries.overdue(channel=channel)
            for batch_id, attempts in overdue.items():
                send_delivery_task(batch_id, attempts, app=self._celery, channel=channel)
            resent += len(overdue)
        return Sweep(expired=expired, chunks_put_back=put_back, requeued=len(abandoned), redispatched=len(stranded),
                     images_deleted=images_deleted, callbacks=resent,
                     studies_closed=studies_closed)

    def _discard_images(self) -> int:
        try:
            return self._images.discard_due()
        except ObjectStoreUnavailable as error:  # the next sweep tries again: the images stay due until deleted
            log.warning("images due for deletion were not deleted: %s", error)
            return 0

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
            enqueue_bulk(job_ids, owner=owner, fair_share=self._fair_share, window=window, chunk_size=self._bulk_chunk,
                         app=self._celery)

    def _release_stalled(self, owners: Sequence[str]) -> None:
        """Let each key with work release what its window has room for: nothing, for a key whose chunks are moving
        (each finish releases the next); the chunks a key would otherwise wait for in vain, for one that stalled."""
        window = window_for(self._workers.count())
        for owner in owners:
            send_bulk_chunks(self._fair_share.release(owner, window=window), owner=owner,
                             fair_share=self._fair_share, app=self._celery)
