"""The job store: jobs and batches in Redis, the job state machine, and their TTLs. Shared by the API and the
workers; the key names it uses are service/keys.py's.

Every transition runs as one Lua script, so status, registries, batch counts, image deletion and notification
never disagree.
"""

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from io import BufferedReader
from typing import Any, cast

from redis.client import Pipeline

from service import scripts
from service.channels import REPORT_CHANNELS, Channel, Reports
from service.connections import connect
from service.keys import (
    ADMISSION_BYTES,
    ADMISSIONS,
    BULK_QUEUED_REGISTRY,
    IMAGES_OWNED,
    INTERACTIVE_QUEUED_REGISTRY,
    METRICS,
    RUNNING_REGISTRY,
    SWEEP_LOCK,
    WEBHOOKS_DUE,
    batch_channel,
    batch_jobs_key,
    batch_key,
    deliveries_due_key,
    heatmap_key,
    idempotency_key,
    image_key,
    job_channel,
    job_key,
    study_header_key,
)
from service.webhooks import Callback, CallbackStatus


class IdempotencyConflict(Exception):
    """An Idempotency-Key already names a submission of other files."""


class IdempotencyInProgress(Exception):
    """An Idempotency-Key names a submission still being admitted: its answer is not known yet."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"the submission of this Idempotency-Key (batch {batch_id}) is still being admitted")
        self.batch_id = batch_id


class AdmissionClosed(Exception):
    """A batch's admission was closed before all its jobs were stored: the reconciler took its API for dead, or
    the batch expired. The jobs it refused were not stored."""


class QueueFull(Exception):
    """Admitting a batch would put more than MAX_QUEUE jobs in the queue; nothing of it was stored."""

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"the queue holds {queued} jobs and takes at most {limit}")
        self.queued = queued
        self.limit = limit


class StoreFull(Exception):
    """Admitting a batch would take Redis past its byte budget; nothing of it was stored."""

    def __init__(self, used: int, budget: int) -> None:
        super().__init__(f"Redis holds {used:,} bytes (reserved included) of its budget of {budget:,}")
        self.used = used
        self.budget = budget


BUDGET_SHARE_OF_MAXMEMORY = 0.9
"""Share of Redis' maxmemory admission fills at most when REDIS_BUDGET_BYTES is not set: the rest is room for the
broker's messages and the records of jobs that finish (service/scripts.py, OPEN_BATCH, uses the same share)."""

IMAGE_FILE_PIECE = 1024 * 1024
"""Bytes of an image file read and sent to Redis at once (write_image_file): a 30 MB DICOM instance is never whole
in memory."""

JOB_RECORD_BYTES = 3072
"""What a waiting job costs Redis besides its image, counted against the byte budget: its record, its entries in
the registries and its batch's list, with room to spare (measured: BENCHMARKS.md, "Object store")."""


class Lane(StrEnum):
    """Which queue a batch's jobs wait in: workers take interactive work (single images, small submissions) before
    bulk work; the bulk lane is shared fairly between API keys (service/fairshare.py)."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


QUEUED_REGISTRIES = {Lane.INTERACTIVE: INTERACTIVE_QUEUED_REGISTRY, Lane.BULK: BULK_QUEUED_REGISTRY}
"""Where each lane's queued jobs are counted; MAX_QUEUE bounds the two together."""


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


ALLOWED_FROM: dict[JobStatus, tuple[JobStatus, ...]] = {
    # running -> queued: the reconciler takes back a job whose lease is over (its worker vanished), or the holder
    # gives it back (service/reconciler.py, worker/tasks.py).
    JobStatus.QUEUED: (JobStatus.RUNNING,),
    # running -> running: a new claim of a job whose lease is over (its worker died).
    JobStatus.RUNNING: (JobStatus.QUEUED, JobStatus.RUNNING),
    JobStatus.SUCCEEDED: (JobStatus.RUNNING,),
    # A job that cannot be classified at upload is stored failed at once (ADD_JOBS), never moved there.
    JobStatus.FAILED: (JobStatus.RUNNING,),
    JobStatus.CANCELED: (JobStatus.QUEUED,),
}
"""The state machine: for each target status, the statuses a job may move to it from."""


@dataclass(frozen=True)
class Job:
    id: str
    batch_id: str
    status: JobStatus
    filename: str
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    deliveries: int = 0
    owner: str = ""
    worker: str = ""
    """The model process that last took the job."""
    explain: bool = False
    """Submitted with explain: the worker adds a Grad-CAM heatmap (heatmap_key) to its result."""
    lane: Lane = Lane.BULK
    token: str = ""
    """Who made the job's last move: the claim that holds it while it runs (service/scripts.py, TRANSITION)."""
    queue_wait: float | None = None
    """Seconds from submission to the job's last claim by a worker, on Redis' clock."""
    image: str = ""
    """Where the image waits: '' in Redis (image_key), or the s3:// location of an object."""
    image_owned: bool = False
    """The service wrote the object, and deletes it when the job finishes; an image submitted by reference is never
    deleted."""

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> "Job":
        return cls(
            id=fields["id"],
            batch_id=fields["batch_id"],
            status=JobStatus(fields["status"]),
            filename=fields["filename"],
            created_at=fields["created_at"],
            started_at=fields.get("started_at") or None,
            finished_at=fields.get("finished_at") or None,
            result=json.loads(fields["result"]) if fields.get("result") else None,
            error=json.loads(fields["error"]) if fields.get("error") else None,
            deliveries=int(fields.get("deliveries", 0)),
            owner=fields.get("owner", ""),
            worker=fields.get("worker", ""),
            explain=fields.get("explain") == "1",
            lane=Lane(fields.get("lane", Lane.BULK)),
            token=fields.get("token", ""),
            queue_wait=float(fields["queue_wait"]) if fields.get("queue_wait") else None,
            image=fields.get("image", ""),
            image_owned=fields.get("image_owned") == "1",
        )


@dataclass(frozen=True)
class Batch:
    id: str
    created_at: str
    total: int
    owner: str
    counts: dict[JobStatus, int]
    """How many of the batch's jobs are in each status, kept by the transition script."""
    lane: Lane = Lane.BULK
    explain: bool = False
    interrupted: int = 0
    """Images of the upload never stored because admission was cut short (its API died): `total` leaves them out."""
    callback: CallbackStatus | None = None
    """The callback asked at submission (callback_url) and how its delivery goes; None without one."""
    reports: dict[Channel, CallbackStatus] | None = None
    """The reports asked at intake (open_batch's `reports`), by channel, and how each delivery goes; None without."""
    growing: bool = False
    """Its size is not known yet: it grows as its images arrive (grow_batch, a DICOM study) until its admission
    closes."""

    @property
    def finished(self) -> int:
        """Jobs of the batch that have finished (succeeded, failed or canceled)."""
        return sum(count for status, count in self.counts.items() if status.finished)

    @property
    def done(self) -> bool:
        return not self.growing and self.finished >= self.total


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes
    """The image's bytes, to keep in Redis until the job finishes; empty when `location` holds them."""
    error: dict[str, Any] | None = None
    """Why this image cannot be classified, known at upload (e.g. an unreadable ZIP member): its job is stored
    failed with this problem, and never queued."""
    location: str = ""
    """The s3:// object that holds the image, if not Redis: written there by the service (`owned`), or named by
    the client (a submission by reference)."""
    owned: bool = False
    written: int = 0
    """Bytes of the image already in Redis at its job's image_key, written before its job by write_image_file (a
    DICOM instance received into a file): add_jobs leaves them as they are."""


class JobStore:
    """Synchronous access to jobs and batches in the Redis at `url`."""

    def __init__(self, url: str, *, ttl: int, budget_bytes: int = 0,
                 on_delivery_due: Callable[[str, Channel], None] | None = None) -> None:
        """`budget_bytes`: REDIS_BUDGET_BYTES, the most Redis may hold before admission refuses (0: 90% of Redis'
        maxmemory, if it has one). `on_delivery_due(batch_id, channel)` is called after a step of this store made
        a batch's delivery due (its callback, or a report: service/deliveries.py): it sends the delivery task.
        Without it, the reconciler sends it."""
        self._redis = connect(url)
        self._on_delivery_due = on_delivery_due
        # Image bytes must come back as bytes, so they are read on a client that does not decode.
        self._raw = connect(url, decode=False)
        # Counters must not be sent twice (add_to_metrics); everything else the store writes is safe to repeat.
        self._once = connect(url, retries=0)
        self.ttl = ttl
        self._budget_bytes = budget_bytes
        self._transition = self._redis.register_script(scripts.TRANSITION)
        self._open_batch = self._redis.register_script(scripts.OPEN_BATCH)
        self._add_jobs = self._redis.register_script(scripts.ADD_JOBS)
        self._close_admission = self._redis.register_script(scripts.CLOSE_ADMISSION)
        self._grow_batch = self._redis.register_script(scripts.GROW_BATCH)
        self._shrink_batch = self._redis.register_script(scripts.SHRINK_BATCH)
        self._keep_admitting = self._redis.register_script(scripts.KEEP_ADMITTING)

    def close(self) -> None:
        self._redis.close()
        self._raw.close()
        self._once.close()

    def create_batch(self, uploads: Sequence[Upload], *, owner: str = "", idempotency: str | None = None,
                     explain: bool = False, lane: Lane = Lane.BULK, max_queue: int | None = None,
                     callback: Callback | None = None) -> tuple[Batch, list[Job], bool]:
        """Store a batch whose images are all at hand (open_batch, add_jobs, close_admission): the batch and its
        jobs, and False instead of True when an idempotent repeat answered an earlier batch."""
        fingerprint = _fingerprint(uploads, explain=explain) if idempotency is not None else ""
        batch, created = self.open_batch(total=len(uploads), owner=owner, idempotency=idempotency,
                                         fingerprint=fingerprint, explain=explain, lane=lane, max_queue=max_queue,
                                         callback=callback, image_bytes=sum(map(_bytes_in_redis, uploads)))
        if not created:
            return batch, self.get_jobs(self.batch_job_ids(batch.id)), False
        jobs = self.add_jobs(batch, uploads, stored_before=0)
        self.close_admission(batch.id)
        return batch, jobs, True

    def open_batch(self, *, total: int, owner: str = "", idempotency: str | None = None, fingerprint: str = "",
                   explain: bool = False, lane: Lane = Lane.BULK, max_queue: int | None = None,
                   callback: Callback | None = None, image_bytes: int = 0,
                   reports: Reports | None = None) -> tuple[Batch, bool]:
        """Open a batch of `total` jobs, to be stored with add_jobs as their images are read, and reserve their
        places in the queue and their bytes in Redis (`image_bytes`: the images it will keep there); (the batch,
        True).

        With an idempotency key, a repeat (the same `fingerprint`) answers the batch first opened and False, once
        that batch is admitted whole; while it is still being admitted, IdempotencyInProgress. Another fingerprint
        under a used key raises IdempotencyConflict. A batch that would put more than `max_queue` jobs in the
        queue, counting places reserved by batches still being admitted, raises QueueFull, and one that would take
        Redis past its byte budget StoreFull: nothing is stored then. With a `callback`, the batch's summary is
        POSTed to it once every job has finished (service/deliveries.py); a repeat with another callback is another
        submission. With `reports`, the study's structured report goes to each of its destinations once every job
        has finished and the admission is closed (service/reports.py); its study header is kept with the batch.
        """
        if callback is not None and fingerprint:
            fingerprint = hashlib.sha256(f"{fingerprint} {callback.url}".encode()).hexdigest()
        created_at = now_iso()
        destinations = reports.destinations() if reports is not None else {}
        batch = Batch(id=str(uuid.uuid4()), created_at=created_at, total=total, owner=owner,
                      counts={status: 0 for status in JobStatus} | {JobStatus.QUEUED: total}, lane=lane,
                      explain=explain, callback=CallbackStatus.pending() if callback is not None else None,
                      reports={channel: CallbackStatus.pending() for channel in destinations}
                      if reports is not None else None)
        answer = self._open_batch(
            keys=[batch_key(batch.id),
                  idempotency_key(owner, idempotency) if idempotency is not None else batch_key(batch.id),
                  QUEUED_REGISTRIES[Lane.BULK], QUEUED_REGISTRIES[Lane.INTERACTIVE], ADMISSIONS, ADMISSION_BYTES,
                  study_header_key(batch.id)],
            args=[-1 if max_queue is None else max_queue, self.ttl, created_at, owner, "1" if explain else "0",
                  lane.value, batch.id, total, fingerprint if idempotency is not None else "",
                  *(("", "", "") if callback is None else (callback.url, *callback.links(batch.id))),
                  image_bytes + JOB_RECORD_BYTES * total, self._budget_bytes,
                  *(destinations.get(channel, "") for channel in REPORT_CHANNELS),
                  reports.study_header if reports is not None else ""])
        if answer[0] == "repeat":
            assert idempotency is not None
            return self._repeat(json.loads(answer[1]), fingerprint, idempotency), False
        if answer[0] == "full":
            raise QueueFull(int(answer[1]), max_queue or 0)
        if answer[0] == "store-full":
            raise StoreFull(int(answer[1]), int(answer[2]))
        return batch, True

    def add_jobs(self, batch: Batch, uploads: Sequence[Upload], *, stored_before: int,
                 job_ids: Sequence[str] | None = None) -> list[Job]:
        """Store the next jobs of a batch being admitted, queued in its lane (an upload known bad is stored failed);
        the jobs stored, in order. `stored_before`: how many of the batch's jobs were stored before these (it makes a
        repeated call store nothing twice); -1 in a batch that grows (grow_batch), whose jobs come in no set order.
        AdmissionClosed if the batch's admission was closed or it has expired: nothing of these is stored then.
        `job_ids`: the jobs' ids, if chosen before (grow_batch); new ones by default."""
        ids = job_ids if job_ids is not None else [str(uuid.uuid4()) for _ in uploads]
        jobs = [_job_of(batch, upload, job_id) for upload, job_id in zip(uploads, ids, strict=True)]
        pipe = self._redis.pipeline(transaction=False)
        # The images go in as plain SETs ahead of the script, in the same round trip: handed to the script, each
        # would be copied into Lua and back out, which doubled Redis' time to store a 109 MB archive (0.4 s).
        for job, upload in zip(jobs, uploads, strict=True):
            # An empty file too (its job fails as such); not an image written in pieces already.
            if upload.error is None and not upload.location and not upload.written:
                pipe.set(image_key(job.id), upload.data, ex=self.ttl)
        self._add_jobs(
            keys=[batch_key(batch.id), batch_jobs_key(batch.id), QUEUED_REGISTRIES[batch.lane], METRICS, ADMISSIONS,
                  WEBHOOKS_DUE, ADMISSION_BYTES,
                  *(key for job in jobs for key in (job_key(job.id), image_key(job.id)))],
            args=[self.ttl, now_iso(), batch_channel(batch.id), batch.id, stored_before,
                  sum(map(_bytes_in_redis, uploads)) + JOB_RECORD_BYTES * len(uploads),
                  *(item for job, upload in zip(jobs, uploads, strict=True)
                    for item in (job.id, job.filename, json.dumps(upload.error) if upload.error is not None else "",
                                 upload.location, "1" if upload.owned else "0"))],
            client=pipe)
        *_, answer = pipe.execute()
        if answer == "gone":
            raise AdmissionClosed(f"batch {batch.id} expired while its upload was being stored")
        if answer == "closed":
            raise AdmissionClosed(f"the admission of batch {batch.id} was closed: it made no progress for too long")
        if answer == "out-of-order":
            raise AdmissionClosed(f"batch {batch.id} has other jobs at place {stored_before}: two writers?")
        return jobs

    def grow_batch(self, batch_id: str, *, job_id: str, image_bytes: int, max_queue: int | None = None,
                   only_if: tuple[str, str] | None = None) -> int:
        """Reserve one more job, `job_id`, in a batch opened with total 0 whose images arrive one by one (a DICOM
        study): its place in the queue and its bytes in Redis (`image_bytes`: what its image will keep there). The
        batch's total grows by one; store the job with add_jobs(stored_before=-1). A number for the job, never given
        to another of the batch (it names the job's object in a bucket).

        QueueFull or StoreFull as open_batch, nothing reserved then; AdmissionClosed if the batch's admission is
        closed, or `only_if` (a key, the value it must hold) does not hold. A repeat for the same job answers the
        same number."""
        condition = only_if or (batch_key(batch_id), batch_id)
        answer = self._grow_batch(
            keys=[batch_key(batch_id), QUEUED_REGISTRIES[Lane.BULK], QUEUED_REGISTRIES[Lane.INTERACTIVE], ADMISSIONS,
                  ADMISSION_BYTES, job_key(job_id), condition[0]],
            args=[batch_id, -1 if max_queue is None else max_queue, image_bytes + JOB_RECORD_BYTES,
                  self._budget_bytes, self.ttl])
        if answer[0] == "closed":
            raise AdmissionClosed(f"the admission of batch {batch_id} is closed")
        if answer[0] == "full":
            raise QueueFull(int(answer[1]), max_queue or 0)
        if answer[0] == "store-full":
            raise StoreFull(int(answer[1]), int(answer[2]))
        return int(answer[1])

    def shrink_batch(self, batch_id: str, *, job_id: str, image_bytes: int) -> bool:
        """Give back the place grow_batch reserved for `job_id`, whose job will not be stored; False if it was
        given back already, or the job is stored."""
        return bool(self._shrink_batch(keys=[batch_key(batch_id), ADMISSIONS, ADMISSION_BYTES, job_key(job_id)],
                                       args=[batch_id, image_bytes + JOB_RECORD_BYTES]))

    def keep_admitting(self, batch_ids: Sequence[str]) -> None:
        """Tell the reconciler these batches' admissions are alive though they store nothing now (they wait for
        more images): the stalled-admission rule takes an admission for dead only when this stops."""
        pipe = self._redis.pipeline(transaction=False)
        for batch_id in batch_ids:
            self._keep_admitting(keys=[batch_key(batch_id)], client=pipe)
        pipe.execute()

    def close_admission(self, batch_id: str, *, withdrawn: bool = False) -> int:
        """End a batch's admission and free its remaining reserved places: every job is stored, or its admission was
        cut short and the batch keeps the jobs it has (its idempotency key is freed then, and when it is `withdrawn`).
        No job is added to it afterwards. The number of jobs never admitted."""
        remembered = cast(str | None, self._redis.hget(batch_key(batch_id), "idempotency_key"))  # a decoding client
        missing = int(self._close_admission(keys=[batch_key(batch_id), ADMISSIONS, WEBHOOKS_DUE,
                                                  remembered or batch_key(batch_id), ADMISSION_BYTES,
                                                  *map(deliveries_due_key, REPORT_CHANNELS)],
                                            args=[batch_id, now_iso(), "1" if withdrawn else "0"]))
        self._announce_reports_due(batch_id)
        return missing

    def study_header(self, batch_id: str) -> bytes | None:
        """The study header the batch was opened with (Reports.study_header); None without, or once it expired."""
        return cast(bytes | None, self._raw.get(study_header_key(batch_id)))  # the raw client: bytes

    def _announce_reports_due(self, batch_id: str) -> None:
        """Tell on_delivery_due of the batch's reports that are due and not yet attempted: closing the admission
        made them due if every job had finished before. A task sent twice makes its attempt once."""
        if self._on_delivery_due is None:
            return
        fields = [f"{channel}_{name}" for channel in REPORT_CHANNELS for name in ("state", "attempts", "due_at")]
        values = cast(list[str | None], self._redis.hmget(batch_key(batch_id), fields))
        for index, channel in enumerate(REPORT_CHANNELS):
            state, attempts, due_at = values[3 * index:3 * index + 3]
            if state == "pending" and attempts == "0" and due_at:
                self._on_delivery_due(batch_id, channel)

    def stalled_admissions(self, *, idle_for: float) -> list[str]:
        """Batches still being admitted that stored nothing for `idle_for` seconds (their API died), or have
        expired."""
        open_ids = list(cast(dict[str, str], self._redis.hgetall(ADMISSIONS)))
        pipe = self._redis.pipeline(transaction=False)
        for batch_id in open_ids:
            pipe.hget(batch_key(batch_id), "admitting_at")
        idle_since = self.redis_now() - idle_for
        return [batch_id for batch_id, moment in zip(open_ids, pipe.execute(), strict=True)
                if moment is None or float(moment) < idle_since]

    def _repeat(self, earlier: dict[str, str], fingerprint: str, key: str) -> Batch:
        if earlier["fingerprint"] != fingerprint:
            raise IdempotencyConflict(f"Idempotency-Key {key!r} was used for other files")
        if earlier.get("state") == "admitting":
            raise IdempotencyInProgress(earlier["batch_id"])
        batch = self.get_batch(earlier["batch_id"])
        if batch is None:
            raise IdempotencyConflict(f"the batch of Idempotency-Key {key!r} has expired; use a new key")
        return batch

    def get_job(self, job_id: str) -> Job | None:
        fields = _text_hash(self._redis.hgetall(job_key(job_id)))
        return Job.from_hash(fields) if fields else None

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        """The jobs that still exist, in the order asked."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(job_key(job_id))
        return [Job.from_hash(fields) for fields in pipe.execute() if fields]

    def get_batch(self, batch_id: str) -> Batch | None:
        fields = _text_hash(self._redis.hgetall(batch_key(batch_id)))
        if not fields:
            return None
        return Batch(id=batch_id, created_at=fields["created_at"], total=int(fields["total"]), owner=fields["owner"],
                     counts={status: int(fields.get(status.value, 0)) for status in JobStatus},
                     lane=Lane(fields.get("lane", Lane.BULK)), explain=fields.get("explain") == "1",
                     interrupted=int(fields.get("interrupted", 0)), callback=CallbackStatus.of(fields),
                     reports={channel: status for channel in REPORT_CHANNELS
                              if (status := CallbackStatus.of(fields, channel)) is not None} or None,
                     growing=fields.get("open_ended") == "1" and "admitting_at" in fields)

    def batch_job_ids(self, batch_id: str, *, start: int = 0, stop: int = -1) -> list[str]:
        """Job ids of a batch from position start to stop, both included (stop -1: to the end)."""
        return cast(list[str], self._redis.lrange(batch_jobs_key(batch_id), start, stop))  # a decoding client

    def write_image_file(self, job_id: str, file: BufferedReader, *, size: int) -> int:
        """Write a job's image into Redis from `file` (its next `size` bytes), before add_jobs stores the job (with
        Upload.written), as one SET whose value is streamed from the file a piece at a time: one round trip, and
        neither the whole file nor a packed copy of a piece (hiredis packs each argument into a new bytes) in this
        process's memory. It expires with JOB_TTL if its job is never stored. The bytes written.

        A SET cut short (the connection lost mid-value, the file shorter than `size`) is discarded by Redis with
        its connection: nothing of it is written. After a connection error it is sent once more, whole, from the
        same place in the file (a SET sent twice leaves what one leaves)."""
        start = file.tell()
        pool = self._raw.connection_pool
        connection: Any = pool.get_connection()  # redis-py leaves a connection's methods untyped

        def send() -> None:
            file.seek(start)
            connection.send_packed_command(_streamed_set(image_key(job_id), file, size=size, ttl=self.ttl))
            connection.read_response()  # OK, or the ResponseError Redis answered (e.g. OOM), raised

        try:
            connection.retry.call_with_retry(send, lambda error: connection.disconnect())
        except BaseException:
            connection.disconnect()  # a command cut short (the file ended) must not run into the next one sent
            raise
        finally:
            pool.release(connection)
        return size

    def forget_image(self, job_id: str) -> None:
        """Delete an image write_image_file wrote for a job that will not be stored."""
        self._raw.delete(image_key(job_id))

    def images(self, job_ids: Sequence[str]) -> list[bytes | None]:
        """The uploaded bytes of each job, in order, in one round trip; None where they are gone."""
        return cast(list[bytes | None], self._raw.mget([image_key(job_id) for job_id in job_ids])) if job_ids else []

    def save_heatmap(self, job_id: str, png: bytes) -> bool:
        """Keep a job's heatmap until its record expires; False if the record is already gone.

        Call it before the job succeeds, so that a client told of the success finds the heatmap.
        """
        remaining = self._redis.pttl(job_key(job_id))  # ms; -2: no such key, -1: no expiry (never set so here)
        if remaining == -2:
            return False
        self._raw.set(heatmap_key(job_id), png, px=remaining if remaining > 0 else self.ttl * 1000)
        return True

    def heatmap(self, job_id: str) -> bytes | None:
        return cast(bytes | None, self._raw.get(heatmap_key(job_id)))  # the raw client: bytes

    def claim(self, job_ids: Sequence[str], *, token: str, lease: float, worker: str = "") -> list[Job]:
        """Lease each job to the claim `token` for `lease` seconds and mark it running, in one round trip: a queued
        job, or a running one whose lease is over (its worker is gone). The jobs claimed, in order; a job finished,
        gone, or leased to another is left out. Only the holder of a lease stores the job's outcome."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id, batch_id in zip(job_ids, self._batch_ids(job_ids), strict=True):
            self._queue_move(pipe, job_id, batch_id, JobStatus.RUNNING, token=token, lease=lease,
                             fields={"started_at": now_iso(), "worker": worker})
        moved = self._settle(pipe.execute())
        return self.get_jobs([job_id for job_id, ok in zip(job_ids, moved, strict=True) if ok])

    def succeed_many(self, results: dict[str, dict[str, Any]], *, holder: str) -> list[str]:
        """Store each job's result and mark it succeeded, in one round trip, if the claim `holder` still holds it:
        the ids of the jobs that succeeded."""
        pipe = self._redis.pipeline(transaction=False)
        finished_at = now_iso()
        for (job_id, result), batch_id in zip(results.items(), self._batch_ids(list(results)), strict=True):
            self._queue_move(pipe, job_id, batch_id, JobStatus.SUCCEEDED, token=holder, holder=holder,
                             fields={"result": json.dumps(result), "finished_at": finished_at})
        return [job_id for job_id, ok in zip(results, self._settle(pipe.execute()), strict=True) if ok]

    def fail(self, job_id: str, error: dict[str, Any], *, holder: str) -> bool:
        """Fail a job the claim `holder` holds, with the problem that says why."""
        return self._move(job_id, JobStatus.FAILED, token=holder, holder=holder,
                          fields={"error": json.dumps(error), "finished_at": now_iso()})

    def give_back(self, job_ids: Sequence[str], *, holder: str) -> list[str]:
        """Queue again the jobs the claim `holder` holds and will not finish (its task cannot go on); the delivery
        does not count against MAX_DELIVERIES. The ids of the jobs given back."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id, batch_id in zip(job_ids, self._batch_ids(job_ids), strict=True):
            self._queue_move(pipe, job_id, batch_id, JobStatus.QUEUED, token=holder, holder=holder)
        return [job_id for job_id, ok in zip(job_ids, self._settle(pipe.execute()), strict=True) if ok]

    def cancel(self, job_id: str) -> bool:
        return self._move(job_id, JobStatus.CANCELED, token=new_token(), fields={"finished_at": now_iso()})

    def cancel_batch(self, batch_id: str) -> list[str]:
        """Cancel every job of the batch that has not started; the ids of those canceled."""
        return [job_id for job_id in self.batch_job_ids(batch_id) if self.cancel(job_id)]

    def withdraw_batch(self, batch_id: str) -> None:
        """Take back a batch whose admission failed: its jobs not started are canceled (their images deleted, their
        places in the queue freed), its admission is closed, and its idempotency key forgotten in the same step, so
        that a retry with it submits anew (a repeat meanwhile is told the first is in progress, never answered with
        this batch: seed 987654321 of bench/chaos.py)."""
        self.cancel_batch(batch_id)
        self.close_admission(batch_id, withdrawn=True)

    def queued_count(self) -> int:
        """Jobs waiting in either lane."""
        return sum(self.queued_counts().values())

    def queued_counts(self) -> dict[Lane, int]:
        """Jobs waiting in each lane, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for registry in QUEUED_REGISTRIES.values():
            pipe.zcard(registry)
        return dict(zip(QUEUED_REGISTRIES, pipe.execute(), strict=True))

    def oldest_queued_ages(self) -> dict[Lane, float]:
        """Seconds the job queued longest ago (submitted, or queued again) has waited in each lane, on Redis' clock;
        0 for a lane where none waits. In one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        for registry in QUEUED_REGISTRIES.values():
            pipe.zrange(registry, 0, 0, withscores=True)
        (seconds, micros), *oldest = pipe.execute()
        now = seconds + micros / 1_000_000
        return {lane: max(0.0, now - first[0][1]) if first else 0.0
                for lane, first in zip(QUEUED_REGISTRIES, oldest, strict=True)}

    def running_count(self) -> int:
        return self._redis.zcard(RUNNING_REGISTRY)

    def release_dead(self, job_ids: Sequence[str], *, process: str) -> list[str]:
        """Queue again the jobs the model process `process` (`host:pid`) was running when it died, whatever their
        lease, so that its task, handed out again at once, takes them; the delivery counts against MAX_DELIVERIES.
        Only its own host can know the process is dead. The ids of the jobs queued again."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id, batch_id in zip(job_ids, self._batch_ids(job_ids), strict=True):
            self._queue_move(pipe, job_id, batch_id, JobStatus.QUEUED, token=new_token(), dead_process=process)
        return [job_id for job_id, ok in zip(job_ids, self._settle(pipe.execute()), strict=True) if ok]

    def requeue_abandoned(self, job_id: str) -> bool:
        """Hand a running job whose lease is over back to its lane's queue (its worker is gone); False if it is no
        longer running, or someone holds it now."""
        return self._move(job_id, JobStatus.QUEUED, token=new_token())

    def leases_over(self) -> list[Job]:
        """The running jobs whose lease is over (on Redis' clock)."""
        return self.get_jobs(cast(list[str], self._redis.zrangebyscore(RUNNING_REGISTRY, "-inf", self.redis_now())))

    def queued_ids_for(self, seconds: float) -> list[str]:
        """The ids of the jobs queued (submitted, or queued again) at least `seconds` ago on Redis' clock, in either
        lane."""
        moment = self.redis_now() - seconds
        pipe = self._redis.pipeline(transaction=False)
        for registry in QUEUED_REGISTRIES.values():
            pipe.zrangebyscore(registry, "-inf", moment)
        return [job_id for ids in pipe.execute() for job_id in ids]

    def note_owned_images(self, locations: Sequence[str]) -> None:
        """Note images the service is about to write to the object store, due for deletion JOB_TTL from now (their
        jobs' transitions make them due at once when the jobs finish; service/images.py)."""
        if locations:
            deletable_at = self.redis_now() + self.ttl
            self._redis.zadd(IMAGES_OWNED, dict.fromkeys(locations, deletable_at), nx=True)

    def owned_images_due(self, *, limit: int) -> list[str]:
        """Up to `limit` images the service wrote whose jobs finished, or expired: to be deleted."""
        return cast(list[str], self._redis.zrangebyscore(IMAGES_OWNED, "-inf", self.redis_now(), start=0, num=limit))

    def owned_images_now_due(self, locations: Sequence[str]) -> None:
        """Make images the service wrote due for deletion at once (their jobs were never stored)."""
        if locations:
            self._redis.zadd(IMAGES_OWNED, dict.fromkeys(locations, self.redis_now()), xx=True)

    def forget_owned_images(self, locations: Sequence[str]) -> None:
        """The images are deleted: forget them."""
        if locations:
            self._redis.zrem(IMAGES_OWNED, *locations)

    def memory(self) -> tuple[int, int]:
        """Redis' used memory and the byte budget admission holds it to (0: none), in bytes."""
        info = self._redis.info("memory")
        budget = self._budget_bytes or int(BUDGET_SHARE_OF_MAXMEMORY * int(info.get("maxmemory", 0)))
        return int(info["used_memory"]), budget

    def redis_now(self) -> float:
        """Redis' clock, in unix seconds: the one clock every host of the fleet compares times on."""
        seconds, micros = self._redis.time()
        return seconds + micros / 1_000_000

    def forget_expired(self) -> int:
        """Take the ids whose records have expired out of every registry; how many were taken out.

        A record and its registry entries are written together, but only the record expires (JOB_TTL): without
        this, expired ids would count against MAX_QUEUE and in the queue-depth gauge for ever.
        """
        forgotten = 0
        for registry in (*QUEUED_REGISTRIES.values(), RUNNING_REGISTRY):
            ids = cast(list[str], self._redis.zrange(registry, 0, -1))
            pipe = self._redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.exists(job_key(job_id))
            gone = [job_id for job_id, exists in zip(ids, pipe.execute(), strict=True) if not exists]
            if gone:
                forgotten += self._redis.zrem(registry, *gone)
        return forgotten

    def take_sweep_turn(self, sweeper: str, *, interval: float) -> bool:
        """True for the one caller in the fleet that is to sweep now; the next turn comes `interval` s later."""
        return bool(self._redis.set(SWEEP_LOCK, sweeper, nx=True, px=int(interval * 1000)))

    def ping(self) -> None:
        """Raise redis' ConnectionError or TimeoutError unless Redis answers."""
        self._redis.ping()

    def add_to_metrics(self, increments: Mapping[str, float]) -> None:
        """Add to cluster-wide counters of the metrics hash, in one round trip (service/metrics.py names them).

        Sent once, never again after a connection error: an increment carried out whose answer was lost would count
        twice. The error is raised; what was observed is lost."""
        pipe = self._once.pipeline(transaction=False)
        for field, amount in increments.items():
            pipe.hincrbyfloat(METRICS, field, amount)
        pipe.execute()

    def metrics(self) -> dict[str, float]:
        """Every counter of the metrics hash, job counts by status included (the transition script keeps those)."""
        return {field: float(value) for field, value in _text_hash(self._redis.hgetall(METRICS)).items()}

    def _move(self, job_id: str, target: JobStatus, *, token: str, holder: str = "",
              fields: Mapping[str, str] | None = None) -> bool:
        pipe = self._redis.pipeline(transaction=False)
        self._queue_move(pipe, job_id, self._batch_ids([job_id])[0], target, token=token, holder=holder,
                         fields=fields)
        (moved,) = self._settle(pipe.execute())
        return moved

    def _settle(self, answers: list[list[Any]]) -> list[bool]:
        """Whether each transition moved its job; on_delivery_due hears of each delivery a transition made due."""
        for answer in answers:
            if len(answer) < 3 or self._on_delivery_due is None:
                continue
            if answer[2]:
                self._on_delivery_due(answer[2], Channel.CALLBACK)
            for channel in answer[4].split(",") if len(answer) > 4 else ():
                self._on_delivery_due(answer[3], Channel(channel))
        return [bool(answer[0]) for answer in answers]

    def _batch_ids(self, job_ids: Sequence[str]) -> list[str]:
        """The batch of each job, in one round trip ('' for a job that is gone): the transition script is handed
        every key it touches, the batch's too, and a job's batch never changes."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(job_key(job_id), "batch_id")
        return [batch_id or "" for batch_id in pipe.execute()]

    def _queue_move(self, pipe: Pipeline, job_id: str, batch_id: str, target: JobStatus, *, token: str,
                    holder: str = "", dead_process: str = "", lease: float = 0.0,
                    fields: Mapping[str, str] | None = None) -> None:
        """Queue the transition script on `pipe` (service/scripts.py, TRANSITION, says what token, holder and lease
        mean), setting `fields` on the job as it moves; its answer, [moved, status before, batch made due], comes
        from execute()."""
        allowed = "," + ",".join(ALLOWED_FROM[target]) + ","
        pairs = [item for pair in (fields or {}).items() for item in pair]
        self._transition(
            keys=[job_key(job_id), image_key(job_id), QUEUED_REGISTRIES[Lane.BULK], RUNNING_REGISTRY, METRICS,
                  batch_key(batch_id), QUEUED_REGISTRIES[Lane.INTERACTIVE], WEBHOOKS_DUE, IMAGES_OWNED,
                  *map(deliveries_due_key, REPORT_CHANNELS)],
            args=[job_id, allowed, target.value, token, holder, dead_process, lease, job_channel(job_id),
                  batch_channel(batch_id), *pairs],
            client=pipe,
        )


def new_token() -> str:
    """A fresh token for a move: a claim's, or a request's own."""
    return uuid.uuid4().hex



def _fingerprint(uploads: Sequence[Upload], *, explain: bool = False) -> str:
    digest = hashlib.sha256()
    for upload in uploads:
        for part in (upload.filename.encode(), upload.data):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    if explain:  # only then, so that the fingerprints of submissions without it are what they always were
        digest.update(b"explain")
    return digest.hexdigest()


def _job_of(batch: Batch, upload: Upload, job_id: str) -> Job:
    return Job(id=job_id, batch_id=batch.id, filename=upload.filename, created_at=batch.created_at,
               owner=batch.owner, explain=batch.explain, lane=batch.lane,
               status=JobStatus.QUEUED if upload.error is None else JobStatus.FAILED, error=upload.error,
               image=upload.location, image_owned=upload.owned)


def _bytes_in_redis(upload: Upload) -> int:
    """What an upload's image takes in Redis: its bytes, unless it is unreadable or kept in an object store."""
    return len(upload.data) + upload.written if upload.error is None and not upload.location else 0


def _streamed_set(key: str, file: BufferedReader, *, size: int, ttl: int) -> Iterator[bytes | memoryview]:
    """`SET key <the file's next size bytes> EX ttl` in RESP, its value read IMAGE_FILE_PIECE at a time into one
    buffer: each piece is sent before the next is read. EOFError if the file ends first (the connection sending it,
    and with it the command cut short, is dropped)."""
    name = key.encode()
    yield b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n" % (len(name), name, size)
    piece = memoryview(bytearray(min(size, IMAGE_FILE_PIECE)))
    left = size
    while left:
        read = file.readinto(piece[:left])
        if not read:
            raise EOFError(f"the image file ended {left} bytes short of the {size} it was to send")
        yield piece[:read]
        left -= read
    seconds = str(ttl).encode()
    yield b"\r\n$2\r\nEX\r\n$%d\r\n%b\r\n" % (len(seconds), seconds)


def _text_hash(fields: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash read on the decoding client (decode_responses=True), which answers str: redis-py types every reply
    `bytes | str`, whichever the client."""
    return cast(dict[str, str], fields)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
