"""Which model processes are alive and what they serve: each announces itself on a heartbeat, and the
announcement lapses WORKER_TTL after the last one, so a worker that vanished drops out by itself.

The `workers` index (names scored by their last heartbeat) lets the live ones be counted and listed without
scanning the keyspace, which holds a few keys per job.
"""

import time
from collections.abc import Sequence
from typing import cast

from redis import Redis
from redis.typing import EncodableT, FieldT

from service.connections import connect
from service.jobstore import now_iso
from service.keys import WORKER_TTL, WORKERS, worker_key


class WorkerRegistry:
    def __init__(self, url: str) -> None:
        self._redis: Redis = connect(url)

    def close(self) -> None:
        self._redis.close()

    def announce(self, name: str, info: dict[str, str]) -> None:
        """Say (again) that this model process is alive and what it serves; call every WORKER_TTL / 3."""
        now = time.time()
        with self._redis.pipeline(transaction=True) as pipe:
            fields: dict[FieldT, EncodableT] = {key: value for key, value in info.items()}  # as hset takes it
            fields |= {"name": name, "seen_at": now_iso()}
            pipe.hset(worker_key(name), mapping=fields)
            pipe.expire(worker_key(name), WORKER_TTL)
            pipe.zadd(WORKERS, {name: now})
            pipe.zremrangebyscore(WORKERS, "-inf", now - WORKER_TTL)  # the ones that vanished without retiring
            pipe.execute()

    def hold(self, name: str, job_ids: Sequence[str]) -> None:
        """Say which jobs this process is working on now (none: an empty list); the reconciler leaves those alone."""
        self._redis.hset(worker_key(name), "holding", ",".join(job_ids))

    def holds(self, name: str, job_id: str) -> bool:
        """Whether the model process `name` is alive and working on this job."""
        heard = self._redis.zscore(WORKERS, name)
        if heard is None or heard < time.time() - WORKER_TTL:
            return False
        holding = cast(str | None, self._redis.hget(worker_key(name), "holding"))  # a decoding client
        return job_id in (holding or "").split(",")

    def retire(self, name: str) -> None:
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(worker_key(name))
            pipe.zrem(WORKERS, name)
            pipe.execute()

    def count(self) -> int:
        """Model processes alive now (heard from within WORKER_TTL)."""
        return int(self._redis.zcount(WORKERS, time.time() - WORKER_TTL, "+inf"))

    def live(self) -> list[dict[str, str]]:
        """The announcements of the model processes alive now."""
        names = cast(list[str], self._redis.zrangebyscore(WORKERS, time.time() - WORKER_TTL, "+inf"))  # decoded
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(worker_key(name))
        return [info for info in pipe.execute() if info]
