"""Fair share of the bulk lane between API keys: each key hands the broker only a small window of its chunks.

The broker's bulk queue is first in, first out. If a key's 10,000 images went in at once, every key after it
would wait for all of them. Instead each key's chunks wait in the job store (`fair:pending:{owner}`), and at most
`window` of them are in the broker at a time; when one finishes, the worker releases that key's next. A key that
releases a chunk puts it behind the chunks other keys already have in the broker, so keys with work waiting take
turns, whatever each one uploaded, and a key with nothing waiting costs nothing.

Every step is a Lua script, so the chunks in flight never disagree with what was released, and each is safe to
send twice (redis-py retries after a connection error): a step names itself (`request`), and a repeat answers what
the first answered. A chunk's finish happens once: a second run of its task (the broker handed it out again)
releases and sends nothing. Whoever releases a chunk sends it; a send that fails puts the chunk back at the head
of its key's pending list. A chunk released and never sent (its sender died in between) is found by the
reconciler, which puts it back too (`put_back` with `released_before`): no chunk holds a place for ever.
"""

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from redis import Redis

from service.connections import connect
from service.keys import FAIR_OWNERS, fair_chunks_key, fair_in_flight_key, fair_pending_key, fair_released_key
from service.scripts import ALLOW_OOM, NOW


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


@dataclass(frozen=True)
class InFlight:
    """A chunk handed to the broker (or about to be) and not finished."""

    owner: str
    chunk: Chunk
    released_at: float
    """When it was released, on Redis' clock."""


_RELEASE = NOW + """
-- Releases a key's pending chunks while its window has room, once per request: a repeat of the same request and
-- run answers what the first answered; another run of a request already made (a task run twice) releases nothing.
-- What a request released is remembered (in `done`) when it released something, or when `remember` says so (it
-- changed something else a repeat must not change again).
-- Returns the chunks released, as JSON.
local function release(pending, in_flight, chunks, done, window, run, remember, ttl)
  local earlier = redis.call('GET', done)
  if earlier then
    local entry = cjson.decode(earlier)
    if entry['run'] == run then return entry['released'] end
    return {}
  end
  local at = now()
  local released = {}
  while redis.call('ZCARD', in_flight) < window do
    local chunk = redis.call('LPOP', pending)
    if not chunk then break end
    local id = cjson.decode(chunk)['id']
    redis.call('ZADD', in_flight, at, id)
    redis.call('HSET', chunks, id, chunk)
    table.insert(released, chunk)
  end
  if remember or #released > 0 then
    redis.call('SET', done, cjson.encode({run = run, released = released}), 'EX', ttl)
  end
  return released
end
"""

_BOOK = """
-- Keeps the set of keys with work, and the key's lists alive as long as its jobs.
local function book(pending, in_flight, chunks, owners, owner, ttl)
  if redis.call('LLEN', pending) + redis.call('ZCARD', in_flight) > 0 then
    redis.call('SADD', owners, owner)
    for _, key in ipairs({pending, in_flight, chunks}) do redis.call('EXPIRE', key, ttl) end
  else
    redis.call('SREM', owners, owner)
  end
end
"""

_ADMIT = _RELEASE + _BOOK + """
-- Queues a key's new chunks and releases as many as its window has room for; with no chunks, only releases.
-- KEYS[1] the key's pending list   KEYS[2] its in-flight set   KEYS[3] its in-flight chunks (id -> JSON)
-- KEYS[4] the set of keys with work   KEYS[5] what this request released
-- ARGV[1] owner   ARGV[2] window   ARGV[3] the request's id   ARGV[4] TTL of the key's lists (its jobs expire by
-- then)   ARGV[5..] the chunks, as JSON
-- Returns the chunks to send now, as JSON.
if not redis.call('GET', KEYS[5]) then
  for i = 5, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
end
local released = release(KEYS[1], KEYS[2], KEYS[3], KEYS[5], tonumber(ARGV[2]), ARGV[3], #ARGV >= 5, ARGV[4])
book(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[4])
return released
"""

# A chunk's finish and a put-back run even when Redis is full: they keep the queue moving, which drains it.
_FINISH = ALLOW_OOM + _RELEASE + _BOOK + """
-- A chunk has finished: its place goes to the key's next chunk.
-- KEYS[1] the key's pending list   KEYS[2] its in-flight set   KEYS[3] its in-flight chunks (id -> JSON)
-- KEYS[4] the set of keys with work   KEYS[5] what this chunk's finish released
-- ARGV[1] owner   ARGV[2] chunk id   ARGV[3] window   ARGV[4] the task run's token   ARGV[5] TTL
-- Returns the chunks to send now, as JSON.
if not redis.call('GET', KEYS[5]) then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
end
local released = release(KEYS[1], KEYS[2], KEYS[3], KEYS[5], tonumber(ARGV[3]), ARGV[4], true, ARGV[5])
book(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[5])
return released
"""

_PUT_BACK = ALLOW_OOM + _BOOK + """
-- Puts chunks released and never sent back at the head of their key's pending list, in their order, so that the key
-- releases them again; a chunk no longer in flight (it finished, or was put back already) is left alone.
-- KEYS[1] the key's pending list   KEYS[2] its in-flight set   KEYS[3] its in-flight chunks (id -> JSON)
-- KEYS[4] the set of keys with work
-- ARGV[1] owner   ARGV[2] TTL   ARGV[3] only chunks released before this moment (Redis' clock; '+inf': any)
-- ARGV[4..] the chunk ids, in the order they were released
-- Returns how many were put back.
local put = 0
for i = #ARGV, 4, -1 do
  local id = ARGV[i]
  local released_at = redis.call('ZSCORE', KEYS[2], id)
  local chunk = redis.call('HGET', KEYS[3], id)
  if released_at and chunk and (ARGV[3] == '+inf' or tonumber(released_at) < tonumber(ARGV[3])) then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('LPUSH', KEYS[1], chunk)
    put = put + 1
  end
end
book(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2])
return put
"""


def window_for(live_processes: int) -> int:
    """Chunks of one key in the broker at once: one for each live model process, so that a key alone keeps every
    worker busy, and a key that arrives later waits for about one chunk per process. None waits beside them: a
    finishing chunk releases the key's next before its task is acknowledged, so the next is on the queue by the
    time its worker asks (a waiting one made a later key wait for BULK_CHUNK images more)."""
    return max(1, live_processes)


class FairShare:
    def __init__(self, url: str, *, ttl: int) -> None:
        """`ttl`: how long a key's pending chunks may wait (its jobs expire by then: JOB_TTL)."""
        self._redis: Redis = connect(url)
        self._ttl = ttl
        self._admit = self._redis.register_script(_ADMIT)
        self._finish = self._redis.register_script(_FINISH)
        self._put_back = self._redis.register_script(_PUT_BACK)

    def close(self) -> None:
        self._redis.close()

    def admit(self, owner: str, chunks: Sequence[Chunk], *, window: int) -> list[Chunk]:
        """Queue a key's chunks; the ones to hand to the broker now (the key's own older ones first)."""
        request = uuid.uuid4().hex
        released = self._admit(keys=[*self._keys(owner), fair_released_key(request)],
                               args=[owner, window, request, self._ttl, *(chunk.to_json() for chunk in chunks)])
        return [Chunk.from_json(text) for text in released]

    def release(self, owner: str, *, window: int) -> list[Chunk]:
        """The key's pending chunks its window has room for, to hand to the broker now (the reconciler's nudge
        for a key none of whose chunks is in flight to release the next)."""
        return self.admit(owner, [], window=window)

    def finish(self, owner: str, chunk_id: str, *, run: str, window: int) -> list[Chunk]:
        """A chunk's task is done; the chunks of its key to hand to the broker now. `run` names this run of the
        task: another run of a chunk already finished releases nothing."""
        released = self._finish(keys=[*self._keys(owner), fair_released_key(chunk_id)],
                                args=[owner, chunk_id, window, run, self._ttl])
        return [Chunk.from_json(text) for text in released]

    def put_back(self, owner: str, chunk_ids: Sequence[str], *, released_before: float | None = None) -> int:
        """Put chunks released and not sent back at the head of their key's pending list (those released before
        `released_before`, on Redis' clock, if given); how many were put back."""
        if not chunk_ids:
            return 0
        return int(self._put_back(keys=self._keys(owner), args=[
            owner, self._ttl, "+inf" if released_before is None else released_before, *chunk_ids]))

    def owners(self) -> list[str]:
        """The keys with bulk chunks pending or in flight."""
        return sorted(cast(set[str], self._redis.smembers(FAIR_OWNERS)))  # a decoding client

    def pending_job_ids(self, owners: Sequence[str]) -> set[str]:
        """The jobs of these keys' chunks waiting their turn (not yet released)."""
        pipe = self._redis.pipeline(transaction=False)
        for owner in owners:
            pipe.lrange(fair_pending_key(owner), 0, -1)
        return {job_id for texts in pipe.execute() for text in texts for job_id in Chunk.from_json(text).job_ids}

    def in_flight(self, owners: Sequence[str]) -> list[InFlight]:
        """These keys' chunks released and not finished."""
        pipe = self._redis.pipeline(transaction=False)
        for owner in owners:
            pipe.zrange(fair_in_flight_key(owner), 0, -1, withscores=True)
            pipe.hgetall(fair_chunks_key(owner))
        answers = pipe.execute()
        return [InFlight(owner, Chunk.from_json(chunks[chunk_id]), released_at)
                for owner, scored, chunks in zip(owners, answers[::2], answers[1::2], strict=True)
                for chunk_id, released_at in scored if chunk_id in chunks]

    def keys_waiting(self) -> int:
        """API keys with bulk chunks pending or in flight."""
        return int(self._redis.scard(FAIR_OWNERS))

    @staticmethod
    def _keys(owner: str) -> list[str]:
        return [fair_pending_key(owner), fair_in_flight_key(owner), fair_chunks_key(owner), FAIR_OWNERS]
