"""The job store: every Redis key name, the job state machine, and TTLs. Shared by the API and the workers.

Layout (all under the `pneuradnet:` prefix, all expiring JOB_TTL after submission):
- `job:{id}`            hash: the job record (see `Job`)
- `job:{id}:image`      string: the uploaded bytes, deleted as soon as the job finishes
- `job:{id}:events`     pub/sub channel: the new status on every transition (long-polls listen here)
- `batch:{id}`          hash: created_at, total, owner
- `batch:{id}:jobs`     list: the batch's job ids in upload order
- `registry:queued`     sorted set: queued job ids scored by submission time (queue depth, backpressure)
- `registry:running`    sorted set: running job ids scored by their deadline (abandoned-job recovery)

Every transition runs as one Lua script, so status, registries, image deletion and notification never disagree.
"""

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from redis import Redis

PREFIX = "pneuradnet"
QUEUED_REGISTRY = f"{PREFIX}:registry:queued"
RUNNING_REGISTRY = f"{PREFIX}:registry:running"


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def image_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:image"


def job_channel(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:events"


def batch_key(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}"


def batch_jobs_key(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}:jobs"


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
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, ''} end
if not string.find(ARGV[2], ',' .. status .. ',', 1, true) then return {0, status} end
local target = ARGV[3]
redis.call('HSET', KEYS[1], 'status', target)
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if target == 'running' then
  redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
else
  redis.call('DEL', KEYS[2])
end
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
        )


@dataclass(frozen=True)
class Batch:
    id: str
    created_at: str
    total: int
    owner: str


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


class JobStore:
    """Synchronous access to jobs and batches in the Redis at `url`."""

    def __init__(self, url: str, *, ttl: int) -> None:
        self.redis = Redis.from_url(url, decode_responses=True)
        # Image bytes must come back as bytes, so they are read on a client that does not decode.
        self._raw = Redis.from_url(url)
        self.ttl = ttl
        self._transition = self.redis.register_script(_TRANSITION)

    def close(self) -> None:
        self.redis.close()
        self._raw.close()

    def create_batch(self, uploads: Sequence[Upload], *, owner: str = "") -> tuple[Batch, list[Job]]:
        """Store a batch, its jobs and their images in one transaction; every job starts queued."""
        created_at = now_iso()
        batch = Batch(id=str(uuid.uuid4()), created_at=created_at, total=len(uploads), owner=owner)
        jobs = [Job(id=str(uuid.uuid4()), batch_id=batch.id, status=JobStatus.QUEUED, filename=upload.filename,
                    created_at=created_at, owner=owner) for upload in uploads]
        score = time.time()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(batch_key(batch.id), mapping={"created_at": created_at, "total": batch.total, "owner": owner})
        pipe.expire(batch_key(batch.id), self.ttl)
        if jobs:
            pipe.rpush(batch_jobs_key(batch.id), *(job.id for job in jobs))
            pipe.expire(batch_jobs_key(batch.id), self.ttl)
        for job, upload in zip(jobs, uploads, strict=True):
            pipe.hset(job_key(job.id), mapping=_job_fields(job))
            pipe.expire(job_key(job.id), self.ttl)
            pipe.set(image_key(job.id), upload.data, ex=self.ttl)
            pipe.zadd(QUEUED_REGISTRY, {job.id: score})
        pipe.execute()
        return batch, jobs

    def get_job(self, job_id: str) -> Job | None:
        fields = self.redis.hgetall(job_key(job_id))
        return Job.from_hash(fields) if fields else None

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        """The jobs that still exist, in the order asked."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(job_key(job_id))
        return [Job.from_hash(fields) for fields in pipe.execute() if fields]

    def get_batch(self, batch_id: str) -> Batch | None:
        fields = self.redis.hgetall(batch_key(batch_id))
        if not fields:
            return None
        return Batch(id=batch_id, created_at=fields["created_at"], total=int(fields["total"]), owner=fields["owner"])

    def batch_job_ids(self, batch_id: str, *, start: int = 0, stop: int = -1) -> list[str]:
        """Job ids of a batch from position start to stop, both included (stop -1: to the end)."""
        return self.redis.lrange(batch_jobs_key(batch_id), start, stop)

    def batch_statuses(self, batch_id: str) -> list[JobStatus]:
        job_ids = self.batch_job_ids(batch_id)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(job_key(job_id), "status")
        return [JobStatus(status) for status in pipe.execute() if status]

    def image(self, job_id: str) -> bytes | None:
        return self._raw.get(image_key(job_id))

    def start(self, job_id: str, *, deadline: float) -> Job | None:
        """Mark a queued (or redelivered running) job as running; None if it is gone or no longer runnable."""
        if not self._move(job_id, JobStatus.RUNNING, score=deadline, started_at=now_iso()):
            return None
        return self.get_job(job_id)

    def succeed(self, job_id: str, result: dict[str, Any]) -> bool:
        return self._move(job_id, JobStatus.SUCCEEDED, result=json.dumps(result), finished_at=now_iso())

    def fail(self, job_id: str, error: dict[str, Any]) -> bool:
        return self._move(job_id, JobStatus.FAILED, error=json.dumps(error), finished_at=now_iso())

    def cancel(self, job_id: str) -> bool:
        return self._move(job_id, JobStatus.CANCELED, finished_at=now_iso())

    def queued_count(self) -> int:
        return self.redis.zcard(QUEUED_REGISTRY)

    def _move(self, job_id: str, target: JobStatus, *, score: float = 0.0, **fields: str) -> bool:
        allowed = "," + ",".join(ALLOWED_FROM[target]) + ","
        pairs = [item for pair in fields.items() for item in pair]
        moved, _ = self._transition(
            keys=[job_key(job_id), image_key(job_id), QUEUED_REGISTRY, RUNNING_REGISTRY],
            args=[job_id, allowed, target.value, score, job_channel(job_id), *pairs],
        )
        return bool(moved)


def _job_fields(job: Job) -> dict[str, str]:
    return {"id": job.id, "batch_id": job.batch_id, "status": job.status.value, "filename": job.filename,
            "created_at": job.created_at, "deliveries": "0", "owner": job.owner}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
