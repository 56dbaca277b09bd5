"""The job store: jobs and batches in Redis, the job state machine, and their TTLs. Shared by the API and the
workers; the key names it uses are service/keys.py's.

Every transition runs as one Lua script, so status, registries, batch counts, image deletion and notification
never disagree.
"""

import hashlib
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError
from redis.typing import EncodableT, FieldT

from service.keys import (
    METRICS,
    QUEUED_REGISTRY,
    RUNNING_REGISTRY,
    batch_channel,
    batch_jobs_key,
    batch_key,
    heatmap_key,
    idempotency_key,
    image_key,
    job_channel,
    job_key,
)


class IdempotencyConflict(Exception):
    """An Idempotency-Key already names a submission of other files."""


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
    # running -> running is a redelivery after the worker holding the job died.
    JobStatus.RUNNING: (JobStatus.QUEUED, JobStatus.RUNNING),
    JobStatus.SUCCEEDED: (JobStatus.RUNNING,),
    JobStatus.FAILED: (JobStatus.QUEUED, JobStatus.RUNNING),
    JobStatus.CANCELED: (JobStatus.QUEUED,),
}
"""The state machine: for each target status, the statuses a job may move to it from."""

_TRANSITION = """
-- Moves one job to a new status, if the state machine allows it from the status it is in.
-- KEYS[1] job hash          KEYS[2] job image        KEYS[3] queued registry   KEYS[4] running registry
-- KEYS[5] metrics hash      KEYS[6] the job's batch hash (it may have expired)
-- ARGV[1] job id            ARGV[2] allowed current statuses, as ",queued,running,"
-- ARGV[3] target status     ARGV[4] deadline (score in the running registry; used when the target is running)
-- ARGV[5] job channel       ARGV[6] batch channel
-- ARGV[7..] field, value pairs to set on the job hash
-- Returns {1, status before} when moved, {0, current status or ''} when not (gone, or not allowed).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, ''} end
if not string.find(ARGV[2], ',' .. status .. ',', 1, true) then return {0, status} end
local target = ARGV[3]
redis.call('HSET', KEYS[1], 'status', target)
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local batch_exists = redis.call('EXISTS', KEYS[6]) == 1
if batch_exists then
  redis.call('HINCRBY', KEYS[6], status, -1)
  redis.call('HINCRBY', KEYS[6], target, 1)
end
if target == 'running' then
  redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
else
  redis.call('DEL', KEYS[2])
  if batch_exists then redis.call('PUBLISH', ARGV[6], target) end
end
redis.call('HINCRBY', KEYS[5], 'jobs_' .. target, 1)
redis.call('PUBLISH', ARGV[5], target)
return {1, status}
"""


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
        )


@dataclass(frozen=True)
class Batch:
    id: str
    created_at: str
    total: int
    owner: str
    counts: dict[JobStatus, int]
    """How many of the batch's jobs are in each status, kept by the transition script."""

    @property
    def finished(self) -> int:
        """Jobs of the batch that have finished (succeeded, failed or canceled)."""
        return sum(count for status, count in self.counts.items() if status.finished)

    @property
    def done(self) -> bool:
        return self.finished >= self.total


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


class JobStore:
    """Synchronous access to jobs and batches in the Redis at `url`."""

    def __init__(self, url: str, *, ttl: int) -> None:
        self._redis = Redis.from_url(url, decode_responses=True)
        # Image bytes must come back as bytes, so they are read on a client that does not decode.
        self._raw = Redis.from_url(url)
        self.ttl = ttl
        self._transition = self._redis.register_script(_TRANSITION)

    def close(self) -> None:
        self._redis.close()
        self._raw.close()

    def create_batch(self, uploads: Sequence[Upload], *, owner: str = "", idempotency: str | None = None,
                     explain: bool = False) -> tuple[Batch, list[Job], bool]:
        """Store a batch, its jobs and their images in one transaction; every job starts queued.

        With an idempotency key, a repeat of the same uploads (and the same `explain`) returns the batch first
        created (and False: nothing new to enqueue); other uploads under a used key raise IdempotencyConflict.
        """
        # Only a keyed submission is fingerprinted: a bulk upload without a key need not hash all its bytes.
        fingerprint = _fingerprint(uploads, explain=explain) if idempotency is not None else ""
        with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if idempotency is not None:
                        pipe.watch(idempotency_key(owner, idempotency))  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.watch unannotated
                        earlier = pipe.get(idempotency_key(owner, idempotency))
                        if earlier is not None:
                            pipe.reset()
                            return (*self._repeat(json.loads(earlier), fingerprint, idempotency), False)
                    batch, jobs = self._new_batch(pipe, uploads, owner=owner, explain=explain)
                    if idempotency is not None:
                        pipe.set(idempotency_key(owner, idempotency),
                                 json.dumps({"batch_id": batch.id, "fingerprint": fingerprint}), ex=self.ttl)
                    pipe.execute()
                    return batch, jobs, True
                except WatchError:
                    continue  # the same key was used concurrently: read what it holds now

    def _new_batch(self, pipe: Pipeline, uploads: Sequence[Upload], *, owner: str,
                   explain: bool) -> tuple[Batch, list[Job]]:
        created_at = now_iso()
        batch = Batch(id=str(uuid.uuid4()), created_at=created_at, total=len(uploads), owner=owner,
                      counts={status: 0 for status in JobStatus} | {JobStatus.QUEUED: len(uploads)})
        jobs = [Job(id=str(uuid.uuid4()), batch_id=batch.id, status=JobStatus.QUEUED, filename=upload.filename,
                    created_at=created_at, owner=owner, explain=explain) for upload in uploads]
        score = time.time()
        pipe.multi()
        pipe.hset(batch_key(batch.id), mapping={"created_at": created_at, "total": batch.total, "owner": owner,
                                                JobStatus.QUEUED.value: batch.total})
        pipe.expire(batch_key(batch.id), self.ttl)
        if jobs:
            pipe.rpush(batch_jobs_key(batch.id), *(job.id for job in jobs))
            pipe.expire(batch_jobs_key(batch.id), self.ttl)
        for job, upload in zip(jobs, uploads, strict=True):
            pipe.hset(job_key(job.id), mapping=_job_fields(job))
            pipe.expire(job_key(job.id), self.ttl)
            pipe.set(image_key(job.id), upload.data, ex=self.ttl)
            pipe.zadd(QUEUED_REGISTRY, {job.id: score})
        pipe.hincrby(METRICS, "jobs_submitted", len(jobs))
        return batch, jobs

    def _repeat(self, earlier: dict[str, str], fingerprint: str, key: str) -> tuple[Batch, list[Job]]:
        if earlier["fingerprint"] != fingerprint:
            raise IdempotencyConflict(f"Idempotency-Key {key!r} was used for other files")
        batch = self.get_batch(earlier["batch_id"])
        if batch is None:
            raise IdempotencyConflict(f"the batch of Idempotency-Key {key!r} has expired; use a new key")
        return batch, self.get_jobs(self.batch_job_ids(batch.id))

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
                     counts={status: int(fields.get(status.value, 0)) for status in JobStatus})

    def batch_job_ids(self, batch_id: str, *, start: int = 0, stop: int = -1) -> list[str]:
        """Job ids of a batch from position start to stop, both included (stop -1: to the end)."""
        return cast(list[str], self._redis.lrange(batch_jobs_key(batch_id), start, stop))  # a decoding client

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

    def start(self, job_id: str, *, deadline: float, worker: str = "") -> Job | None:
        """Mark a queued (or redelivered running) job as running; None if it is gone or no longer runnable."""
        started = self.start_many([job_id], deadline=deadline, worker=worker)
        return started[0] if started else None

    def start_many(self, job_ids: Sequence[str], *, deadline: float, worker: str = "") -> list[Job]:
        """start() for each job, in one round trip: the jobs that started, in order."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id, batch_id in zip(job_ids, self._batch_ids(job_ids), strict=True):
            self._queue_move(pipe, job_id, batch_id, JobStatus.RUNNING, score=deadline, started_at=now_iso(),
                             worker=worker)
        moved = pipe.execute()
        return self.get_jobs([job_id for job_id, (ok, _) in zip(job_ids, moved, strict=True) if ok])

    def succeed(self, job_id: str, result: dict[str, Any]) -> bool:
        return self.succeed_many({job_id: result}) == [job_id]

    def succeed_many(self, results: dict[str, dict[str, Any]]) -> list[str]:
        """succeed() for each job, in one round trip: the ids of the jobs that succeeded."""
        pipe = self._redis.pipeline(transaction=False)
        finished_at = now_iso()
        for (job_id, result), batch_id in zip(results.items(), self._batch_ids(list(results)), strict=True):
            self._queue_move(pipe, job_id, batch_id, JobStatus.SUCCEEDED, result=json.dumps(result),
                             finished_at=finished_at)
        return [job_id for job_id, (ok, _) in zip(results, pipe.execute(), strict=True) if ok]

    def fail(self, job_id: str, error: dict[str, Any]) -> bool:
        return self._move(job_id, JobStatus.FAILED, error=json.dumps(error), finished_at=now_iso())

    def cancel(self, job_id: str) -> bool:
        return self._move(job_id, JobStatus.CANCELED, finished_at=now_iso())

    def cancel_batch(self, batch_id: str) -> list[str]:
        """Cancel every job of the batch that has not started; the ids of those canceled."""
        return [job_id for job_id in self.batch_job_ids(batch_id) if self.cancel(job_id)]

    def withdraw_batch(self, batch_id: str, *, owner: str = "", idempotency: str | None = None) -> None:
        """Take back a batch whose jobs could not be enqueued: its jobs are canceled (their images deleted, their
        places in the queue freed) and its idempotency key is forgotten, so that a retry with it submits anew."""
        self.cancel_batch(batch_id)
        if idempotency is not None:
            self._redis.delete(idempotency_key(owner, idempotency))

    def queued_count(self) -> int:
        return self._redis.zcard(QUEUED_REGISTRY)

    def running_count(self) -> int:
        return self._redis.zcard(RUNNING_REGISTRY)

    def ping(self) -> None:
        """Raise redis' ConnectionError or TimeoutError unless Redis answers."""
        self._redis.ping()

    def add_to_metrics(self, increments: Mapping[str, float]) -> None:
        """Add to cluster-wide counters of the metrics hash, in one round trip (service/metrics.py names them)."""
        pipe = self._redis.pipeline(transaction=False)
        for field, amount in increments.items():
            pipe.hincrbyfloat(METRICS, field, amount)
        pipe.execute()

    def metrics(self) -> dict[str, float]:
        """Every counter of the metrics hash, job counts by status included (the transition script keeps those)."""
        return {field: float(value) for field, value in _text_hash(self._redis.hgetall(METRICS)).items()}

    def _move(self, job_id: str, target: JobStatus, **fields: str) -> bool:
        pipe = self._redis.pipeline(transaction=False)
        self._queue_move(pipe, job_id, self._batch_ids([job_id])[0], target, score=0.0, **fields)
        ((moved, _),) = pipe.execute()
        return bool(moved)

    def _batch_ids(self, job_ids: Sequence[str]) -> list[str]:
        """The batch of each job, in one round trip ('' for a job that is gone): the transition script is handed
        every key it touches, the batch's too, and a job's batch never changes."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(job_key(job_id), "batch_id")
        return [batch_id or "" for batch_id in pipe.execute()]

    def _queue_move(self, pipe: Pipeline, job_id: str, batch_id: str, target: JobStatus, *, score: float = 0.0,
                    **fields: str) -> None:
        """Queue the transition script on `pipe`; its answer, [moved, status before], comes from execute()."""
        allowed = "," + ",".join(ALLOWED_FROM[target]) + ","
        pairs = [item for pair in fields.items() for item in pair]
        self._transition(
            keys=[job_key(job_id), image_key(job_id), QUEUED_REGISTRY, RUNNING_REGISTRY, METRICS,
                  batch_key(batch_id)],
            args=[job_id, allowed, target.value, score, job_channel(job_id), batch_channel(batch_id), *pairs],
            client=pipe,
        )


def _fingerprint(uploads: Sequence[Upload], *, explain: bool = False) -> str:
    digest = hashlib.sha256()
    for upload in uploads:
        for part in (upload.filename.encode(), upload.data):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    if explain:  # only then, so that the fingerprints of submissions without it are what they always were
        digest.update(b"explain")
    return digest.hexdigest()


def _job_fields(job: Job) -> dict[FieldT, EncodableT]:
    """The job's hash, as hset takes it (from_hash reads it back as str: every field is written as a string)."""
    return {"id": job.id, "batch_id": job.batch_id, "status": job.status.value, "filename": job.filename,
            "created_at": job.created_at, "deliveries": "0", "owner": job.owner, "explain": "1" if job.explain else "0"}


def _text_hash(fields: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash read on the decoding client (decode_responses=True), which answers str: redis-py types every reply
    `bytes | str`, whichever the client."""
    return cast(dict[str, str], fields)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
