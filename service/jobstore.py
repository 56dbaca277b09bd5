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

from redis.client import Pipeline

from service.connections import connect
from service.keys import (
    INTERACTIVE_QUEUED_REGISTRY,
    METRICS,
    QUEUED_REGISTRY,
    RUNNING_REGISTRY,
    SWEEP_LOCK,
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


class QueueFull(Exception):
    """Admitting a batch would put more than MAX_QUEUE jobs in the queue; nothing of it was stored."""

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"the queue holds {queued} jobs and takes at most {limit}")
        self.queued = queued
        self.limit = limit


class Lane(StrEnum):
    """Which queue a batch's jobs wait in: workers take interactive work (single images, small submissions) before
    bulk work; the bulk lane is shared fairly between API keys (service/fairshare.py)."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


QUEUED_REGISTRIES = {Lane.INTERACTIVE: INTERACTIVE_QUEUED_REGISTRY, Lane.BULK: QUEUED_REGISTRY}
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
    # running -> queued: the reconciler hands back a job whose worker vanished (service/reconciler.py).
    JobStatus.QUEUED: (JobStatus.RUNNING,),
    # running -> running is a redelivery after the worker holding the job died.
    JobStatus.RUNNING: (JobStatus.QUEUED, JobStatus.RUNNING),
    JobStatus.SUCCEEDED: (JobStatus.RUNNING,),
    JobStatus.FAILED: (JobStatus.QUEUED, JobStatus.RUNNING),
    JobStatus.CANCELED: (JobStatus.QUEUED,),
}
"""The state machine: for each target status, the statuses a job may move to it from."""

_TRANSITION = """
-- Moves one job to a new status, if the state machine allows it from the status it is in.
-- KEYS[1] job hash          KEYS[2] job image        KEYS[3] bulk lane's queued registry
-- KEYS[4] running registry
-- KEYS[5] metrics hash      KEYS[6] the job's batch hash (it may have expired)
-- KEYS[7] interactive lane's queued registry
-- ARGV[1] job id            ARGV[2] allowed current statuses, as ",queued,running,"
-- ARGV[3] target status     ARGV[4] score in the registry the target puts the job in: its deadline when running,
--                           now when queued again
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
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local batch_exists = redis.call('EXISTS', KEYS[6]) == 1
if batch_exists then
  redis.call('HINCRBY', KEYS[6], status, -1)
  redis.call('HINCRBY', KEYS[6], target, 1)
end
if target == 'running' then
  redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
elseif target == 'queued' then
  local queued = KEYS[3]
  if redis.call('HGET', KEYS[1], 'lane') == 'interactive' then queued = KEYS[7] end
  redis.call('ZADD', queued, ARGV[4], ARGV[1])
else
  redis.call('DEL', KEYS[2])
  if batch_exists then redis.call('PUBLISH', ARGV[6], target) end
end
redis.call('HINCRBY', KEYS[5], 'jobs_' .. target, 1)
redis.call('PUBLISH', ARGV[5], target)
return {1, status}
"""


_ADMIT = """
-- Admits a batch whole, or nothing of it: a repeat of an idempotent submission answers the batch it names, a batch
-- that would overflow MAX_QUEUE is refused, and otherwise the batch, its jobs and their images are stored queued.
-- KEYS[1] batch hash   KEYS[2] batch's job list   KEYS[3] idempotency key (unused without one)
-- KEYS[4] the lane's queued registry   KEYS[5] the other lane's queued registry   KEYS[6] metrics hash
-- KEYS[7..] per job: its hash, its image
-- ARGV[1] MAX_QUEUE (-1: no limit)   ARGV[2] TTL   ARGV[3] queued score (now)   ARGV[4] created_at   ARGV[5] owner
-- ARGV[6] explain ('1' or '0')   ARGV[7] lane   ARGV[8] batch id
-- ARGV[9] what the idempotency key is to hold (JSON), '' without one   ARGV[10..] per job: id, filename, bytes
-- Returns {'repeat', what the idempotency key holds}, {'full', jobs queued now} or {'created'}.
if ARGV[9] ~= '' then
  local earlier = redis.call('GET', KEYS[3])
  if earlier then return {'repeat', earlier} end
end
local count = (#ARGV - 9) / 3
local queued = redis.call('ZCARD', KEYS[4]) + redis.call('ZCARD', KEYS[5])
if tonumber(ARGV[1]) >= 0 and queued + count > tonumber(ARGV[1]) then return {'full', tostring(queued)} end
local ttl = ARGV[2]
redis.call('HSET', KEYS[1], 'created_at', ARGV[4], 'total', count, 'owner', ARGV[5], 'lane', ARGV[7],
           'queued', count)
redis.call('EXPIRE', KEYS[1], ttl)
for i = 0, count - 1 do
  local id, filename, data = ARGV[10 + 3 * i], ARGV[11 + 3 * i], ARGV[12 + 3 * i]
  local record, image = KEYS[7 + 2 * i], KEYS[8 + 2 * i]
  redis.call('RPUSH', KEYS[2], id)
  redis.call('HSET', record, 'id', id, 'batch_id', ARGV[8], 'status', 'queued', 'filename', filename,
             'created_at', ARGV[4], 'deliveries', '0', 'owner', ARGV[5], 'explain', ARGV[6], 'lane', ARGV[7])
  redis.call('EXPIRE', record, ttl)
  redis.call('SET', image, data, 'EX', ttl)
  redis.call('ZADD', KEYS[4], ARGV[3], id)
end
if count > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
if ARGV[9] ~= '' then redis.call('SET', KEYS[3], ARGV[9], 'EX', ttl) end
redis.call('HINCRBY', KEYS[6], 'jobs_submitted', count)
return {'created'}
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
    lane: Lane = Lane.BULK

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
        self._redis = connect(url)
        # Image bytes must come back as bytes, so they are read on a client that does not decode.
        self._raw = connect(url, decode=False)
        self.ttl = ttl
        self._transition = self._redis.register_script(_TRANSITION)
        self._admit = self._redis.register_script(_ADMIT)

    def close(self) -> None:
        self._redis.close()
        self._raw.close()

    def create_batch(self, uploads: Sequence[Upload], *, owner: str = "", idempotency: str | None = None,
                     explain: bool = False, lane: Lane = Lane.BULK,
                     max_queue: int | None = None) -> tuple[Batch, list[Job], bool]:
        """Store a batch, its jobs and their images in one atomic step; every job starts queued in `lane`.

        With an idempotency key, a repeat of the same uploads (and the same `explain`) returns the batch first
        created (and False: nothing new to enqueue); other uploads under a used key raise IdempotencyConflict.
        A batch that would put more than `max_queue` jobs in the queue raises QueueFull, and nothing is stored.
        """
        # Only a keyed submission is fingerprinted: a bulk upload without a key need not hash all its bytes.
        fingerprint = _fingerprint(uploads, explain=explain) if idempotency is not None else ""
        created_at = now_iso()
        batch = Batch(id=str(uuid.uuid4()), created_at=created_at, total=len(uploads), owner=owner,
                      counts={status: 0 for status in JobStatus} | {JobStatus.QUEUED: len(uploads)}, lane=lane)
        jobs = [Job(id=str(uuid.uuid4()), batch_id=batch.id, status=JobStatus.QUEUED, filename=upload.filename,
                    created_at=created_at, owner=owner, explain=explain, lane=lane) for upload in uploads]
        other_lane = Lane.INTERACTIVE if lane is Lane.BULK else Lane.BULK
        keys = [batch_key(batch.id), batch_jobs_key(batch.id),
                idempotency_key(owner, idempotency) if idempotency is not None else batch_key(batch.id),
                QUEUED_REGISTRIES[lane], QUEUED_REGISTRIES[other_lane], METRICS,
                *(key for job in jobs for key in (job_key(job.id), image_key(job.id)))]
        remembered = json.dumps({"batch_id": batch.id, "fingerprint": fingerprint}) if idempotency is not None else ""
        answer = self._admit(keys=keys, args=[
            -1 if max_queue is None else max_queue, self.ttl, time.time(), created_at, owner,
            "1" if explain else "0", lane.value, batch.id, remembered,
            *(item for job, upload in zip(jobs, uploads, strict=True) for item in (job.id, job.filename, upload.data)),
        ])
        if answer[0] == "repeat":
            assert idempotency is not None
            return (*self._repeat(json.loads(answer[1]), fingerprint, idempotency), False)
        if answer[0] == "full":
            raise QueueFull(int(answer[1]), max_queue or 0)
        return batch, jobs, True

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
                     counts={status: int(fields.get(status.value, 0)) for status in JobStatus},
                     lane=Lane(fields.get("lane", Lane.BULK)))

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
        """Jobs waiting in either lane."""
        return sum(self.queued_counts().values())

    def queued_counts(self) -> dict[Lane, int]:
        """Jobs waiting in each lane, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for registry in QUEUED_REGISTRIES.values():
            pipe.zcard(registry)
        return dict(zip(QUEUED_REGISTRIES, pipe.execute(), strict=True))

    def running_count(self) -> int:
        return self._redis.zcard(RUNNING_REGISTRY)

    def requeue(self, job_id: str) -> bool:
        """Hand a running job back to its lane's queue (its worker is gone); False if it is no longer running."""
        return self._move(job_id, JobStatus.QUEUED, score=time.time())

    def running_past(self, deadline: float) -> list[Job]:
        """The running jobs whose deadline was before `deadline`."""
        return self.get_jobs(cast(list[str], self._redis.zrangebyscore(RUNNING_REGISTRY, "-inf", deadline)))

    def queued_since(self, moment: float) -> list[Job]:
        """The jobs queued (submitted, or queued again) before `moment`, in either lane."""
        pipe = self._redis.pipeline(transaction=False)
        for registry in QUEUED_REGISTRIES.values():
            pipe.zrangebyscore(registry, "-inf", moment)
        return self.get_jobs([job_id for ids in pipe.execute() for job_id in ids])

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
        """Add to cluster-wide counters of the metrics hash, in one round trip (service/metrics.py names them)."""
        pipe = self._redis.pipeline(transaction=False)
        for field, amount in increments.items():
            pipe.hincrbyfloat(METRICS, field, amount)
        pipe.execute()

    def metrics(self) -> dict[str, float]:
        """Every counter of the metrics hash, job counts by status included (the transition script keeps those)."""
        return {field: float(value) for field, value in _text_hash(self._redis.hgetall(METRICS)).items()}

    def _move(self, job_id: str, target: JobStatus, *, score: float = 0.0, **fields: str) -> bool:
        pipe = self._redis.pipeline(transaction=False)
        self._queue_move(pipe, job_id, self._batch_ids([job_id])[0], target, score=score, **fields)
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
                  batch_key(batch_id), INTERACTIVE_QUEUED_REGISTRY],
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


def _text_hash(fields: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash read on the decoding client (decode_responses=True), which answers str: redis-py types every reply
    `bytes | str`, whichever the client."""
    return cast(dict[str, str], fields)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
