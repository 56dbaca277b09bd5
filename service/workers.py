"""Which model processes are alive and what they serve: each announces itself on a heartbeat, and the
announcement lapses WORKER_TTL after the last one, so a worker that vanished drops out by itself.

The `workers` index (names scored by their last heartbeat, on Redis' clock: the hosts' own clocks may disagree)
lets the live ones be counted and listed without scanning the keyspace, which holds a few keys per job.
"""

from typing import cast

from redis import Redis

from service.connections import connect
from service.jobstore import now_iso
from service.keys import WORKER_TTL, WORKERS, worker_key
from service.scripts import ALLOW_OOM, NOW

# A worker announces itself even when Redis is full: it is what drains it.
_ANNOUNCE = ALLOW_OOM + NOW + """
-- Says (again) that a model process is alive and what it serves; forgets the ones not heard of within the TTL.
-- KEYS[1] the process's hash   KEYS[2] the index of live processes
-- ARGV[1] its name   ARGV[2] the TTL (seconds)   ARGV[3..] field, value pairs of its announcement
local at = now()
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], at, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', at - tonumber(ARGV[2]))
return 1
"""

_LIVE = NOW + """
-- The processes heard of within the TTL: their number, or their names.
-- KEYS[1] the index of live processes   ARGV[1] the TTL (seconds)   ARGV[2] 'count' or 'names'
local since = now() - tonumber(ARGV[1])
if ARGV[2] == 'count' then return redis.call('ZCOUNT', KEYS[1], since, '+inf') end
return redis.call('ZRANGE', KEYS[1], since, '+inf', 'BYSCORE')
"""


class WorkerRegistry:
    def __init__(self, url: str) -> None:
        self._redis: Redis = connect(url)
        self._announce = self._redis.register_script(_ANNOUNCE)
        self._live = self._redis.register_script(_LIVE)

    def close(self) -> None:
        self._redis.close()

    def announce(self, name: str, info: dict[str, str]) -> None:
        """Say (again) that this model process is alive and what it serves; call every WORKER_TTL / 3."""
        fields = info | {"name": name, "seen_at": now_iso()}
        self._announce(keys=[worker_key(name), WORKERS],
                       args=[name, WORKER_TTL, *(item for pair in fields.items() for item in pair)])

    def retire(self, name: str) -> None:
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(worker_key(name))
            pipe.zrem(WORKERS, name)
            pipe.execute()

    def count(self) -> int:
        """Model processes alive now (heard from within WORKER_TTL)."""
        return int(self._live(keys=[WORKERS], args=[WORKER_TTL, "count"]))

    def live(self) -> list[dict[str, str]]:
        """The announcements of the model processes alive now."""
        names = cast(list[str], self._live(keys=[WORKERS], args=[WORKER_TTL, "names"]))  # a decoding client
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(worker_key(name))
        return [info for info in pipe.execute() if info]
