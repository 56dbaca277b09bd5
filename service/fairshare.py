"""Fair share of the bulk lane between API keys: each key hands the broker only a small window of its chunks.

The broker's bulk queue is first in, first out. If a key's 10,000 images went in at once, every key after it
would wait for all of them. Instead each key's chunks wait in the job store (`fair:pending:{owner}`), and at most
`window` of them are in the broker at a time; when one finishes, the worker releases that key's next. A key that
releases a chunk puts it behind the chunks other keys already have in the broker, so keys with work waiting take
turns, whatever each one uploaded, and a key with nothing waiting costs nothing.

Both steps are Lua scripts, so the count of chunks in flight never disagrees with what was released. Releasing
is at least once: a task delivered twice re-sends the chunks its first run released (they are idempotent: a job
runs only from `queued`, or again after its worker died), never more.
"""

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from redis import Redis

from service.connections import connect
from service.keys import FAIR_OWNERS, fair_in_flight_key, fair_pending_key, fair_released_key


@dataclass(frozen=True)
class Chunk:
    """Up to MAX_BATCH jobs of one key, classified by one task."""

    id: str
    job_ids: list[str]

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "jobs": self.job_ids})

    @classmethod
    def from_json(cls, text: str) -> "Chunk":
        fields = json.loads(text)
        return cls(id=fields["id"], job_ids=fields["jobs"])


_RELEASE = """
local function release(pending, in_flight, owners, owner, window, now, stale_before, ttl)
  -- A chunk whose task was lost (its sender died before sending it) must not hold a place for ever.
  redis.call('ZREMRANGEBYSCORE', in_flight, '-inf', stale_before)
  local released = {}
  while redis.call('ZCARD', in_flight) < window do
    local chunk = redis.call('LPOP', pending)
    if not chunk then break end
    redis.call('ZADD', in_flight, now, cjson.decode(chunk)['id'])
    table.insert(released, chunk)
  end
  if redis.call('LLEN', pending) + redis.call('ZCARD', in_flight) > 0 then
    redis.call('SADD', owners, owner)
    redis.call('EXPIRE', pending, ttl)
    redis.call('EXPIRE', in_flight, ttl)
  else
    redis.call('SREM', owners, owner)
  end
  return released
end
"""

_ADMIT = _RELEASE + """
-- Queues a key's new chunks and releases as many as its window has room for.
-- KEYS[1] the key's pending list   KEYS[2] its in-flight set   KEYS[3] the set of keys with work
-- ARGV[1] owner   ARGV[2] window   ARGV[3] now   ARGV[4] in-flight entries older than this are dropped
-- ARGV[5] TTL of the key's lists (its jobs expire by then)   ARGV[6..] the chunks, as JSON
-- Returns the chunks to send now, as JSON.
for i = 6, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
return release(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5])
"""

_FINISH = _RELEASE + """
-- A chunk has finished: its place goes to the key's next chunk. Run twice, it answers what it answered first.
-- KEYS[1] the key's pending list   KEYS[2] its in-flight set   KEYS[3] the set of keys with work
-- KEYS[4] what this chunk's finish released
-- ARGV[1] owner   ARGV[2] chunk id   ARGV[3] window   ARGV[4] now   ARGV[5] stale cut-off   ARGV[6] TTL
-- Returns the chunks to send now, as JSON.
local earlier = redis.call('GET', KEYS[4])
if earlier then return cjson.decode(earlier) end
redis.call('ZREM', KEYS[2], ARGV[2])
local released = release(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6])
redis.call('SET', KEYS[4], cjson.encode(released), 'EX', ARGV[6])
return released
"""


IN_FLIGHT_EXPIRY = 600
"""Seconds after which a chunk handed to the broker and never finished stops holding a place in its key's window:
longer than a chunk waits behind other keys' windows plus the broker's redelivery of a crashed worker's task, so
only a task that was lost (its sender died before sending it) is ever dropped, and its key's turn comes back."""


def window_for(live_processes: int) -> int:
    """Chunks of one key in the broker at once: one running on each live model process and one waiting, so that a
    key alone keeps every worker busy, and a key that arrives later waits for about one chunk per process."""
    return max(1, live_processes) + 1


class FairShare:
    def __init__(self, url: str, *, ttl: int) -> None:
        """`ttl`: how long a key's pending chunks may wait (its jobs expire by then: JOB_TTL)."""
        self._redis: Redis = connect(url)
        self._ttl = ttl
        self._admit = self._redis.register_script(_ADMIT)
        self._finish = self._redis.register_script(_FINISH)

    def close(self) -> None:
        self._redis.close()

    def admit(self, owner: str, chunks: Sequence[Chunk], *, window: int) -> list[Chunk]:
        """Queue a key's chunks; the ones to hand to the broker now."""
        now = time.time()
        released = self._admit(keys=[fair_pending_key(owner), fair_in_flight_key(owner), FAIR_OWNERS],
                               args=[owner, window, now, now - IN_FLIGHT_EXPIRY, self._ttl,
                                     *(chunk.to_json() for chunk in chunks)])
        return [Chunk.from_json(text) for text in released]

    def finish(self, owner: str, chunk_id: str, *, window: int) -> list[Chunk]:
        """A chunk's task is done; the chunks of its key to hand to the broker now."""
        now = time.time()
        released = self._finish(keys=[fair_pending_key(owner), fair_in_flight_key(owner), FAIR_OWNERS,
                                      fair_released_key(chunk_id)],
                                args=[owner, chunk_id, window, now, now - IN_FLIGHT_EXPIRY, self._ttl])
        return [Chunk.from_json(text) for text in released]

    def pending_job_ids(self) -> set[str]:
        """The jobs of every key's chunks waiting their turn (not yet handed to the broker)."""
        owners = cast(set[str], self._redis.smembers(FAIR_OWNERS))  # a decoding client
        pipe = self._redis.pipeline(transaction=False)
        for owner in owners:
            pipe.lrange(fair_pending_key(owner), 0, -1)
        return {job_id for texts in pipe.execute() for text in texts for job_id in Chunk.from_json(text).job_ids}

    def keys_waiting(self) -> int:
        """API keys with bulk chunks pending or in flight."""
        return int(self._redis.scard(FAIR_OWNERS))
