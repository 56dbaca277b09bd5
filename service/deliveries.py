"""A batch's deliveries (its callback, its reports: service/channels.py), kept with the batch in Redis: for each
channel, at most one attempt at a time, each attempt numbered, exactly one acknowledged outcome.

The life of a delivery (fields of the batch hash, `<channel>_*`, e.g. `callback_state`; CallbackStatus reads them):

1. Admission stores where it goes (`callback_url`, `report_dicom_to`, ...), state `pending`, no attempts
   (service/jobstore.py).
2. The one step that finishes the batch records the delivery id and adds the batch to the channel's due registry
   (the scripts' mark_callback_due, mark_reports_due: service/scripts.py); whoever made that step sends a delivery
   task.
3. A delivery task claims an attempt (CLAIM): only while the state is pending or delivering, only if it names the
   number of attempts made so far (so a task sent twice, or a stale copy handed out again by the broker, runs at
   most once), and only when no other attempt holds the lease. The lease ends an attempt whose worker died.
4. The attempt's outcome is recorded (RECORD) if no later attempt overtook it: delivered, failed, or pending again
   with the time of the next attempt.

The due registry scores each unfinished delivery with when something must next happen to it (due now, the end of a
lease, the time of a retry); the reconciler sends a task for each one RESEND_AFTER past that moment, which covers a
task lost with its worker, a retry too far off to wait on the broker, and a worker killed mid-request.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from celery import Celery

from service.channels import Channel
from service.connections import connect
from service.keys import batch_key, deliveries_due_key
from service.queue import send_delivery_task
from service.scripts import ALLOW_OOM
from service.webhooks import CallbackState, Verdict

log = logging.getLogger(__name__)

RESEND_AFTER = 10.0
"""Seconds a due delivery may go past its moment before the reconciler sends another task: a task starts within
milliseconds unless every worker is busy with a batch, and a task sent twice runs once."""

# A delivery goes on even when Redis is full (its state is a few small fields).
_CLAIM = ALLOW_OOM + """
-- Claims the next attempt of one of a batch's deliveries.
-- KEYS[1] batch hash   KEYS[2] the channel's due registry
-- ARGV[1] batch id     ARGV[2] attempts made, as the task's sender saw them   ARGV[3] lease (seconds)
-- ARGV[4] the channel (its fields are '<channel>_state', ...)
-- Returns {'claimed', the attempt's number}, or {why not}: 'gone' (expired), 'not-due', 'done' (delivered, failed
-- or skipped), 'stale' (another task made that attempt), 'busy' (an attempt holds the lease).
local c = ARGV[4] .. '_'
local f = redis.call('HMGET', KEYS[1], c .. 'state', c .. 'attempts', c .. 'lease_until', c .. 'delivery')
if not f[1] then redis.call('ZREM', KEYS[2], ARGV[1]) return {'gone'} end
if not f[4] then return {'not-due'} end
if f[1] ~= 'pending' and f[1] ~= 'delivering' then return {'done'} end
if tonumber(f[2]) ~= tonumber(ARGV[2]) then return {'stale'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if f[1] == 'delivering' and tonumber(f[3] or 0) > now then return {'busy'} end
local attempt = tonumber(f[2]) + 1
local lease_until = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], c .. 'state', 'delivering', c .. 'attempts', attempt, c .. 'lease_until', lease_until)
redis.call('HDEL', KEYS[1], c .. 'next_at')
redis.call('ZADD', KEYS[2], lease_until, ARGV[1])
return {'claimed', attempt}
"""

_RECORD = ALLOW_OOM + """
-- Records how an attempt ended, unless a later attempt overtook it (its lease ran out and another claimed).
-- KEYS[1] batch hash   KEYS[2] the channel's due registry
-- ARGV[1] batch id     ARGV[2] the attempt's number   ARGV[3] verdict: 'delivered', 'retry' or 'give-up'
-- ARGV[4] the answer's status (HTTP, or DICOM for a C-STORE; '' without an answer)   ARGV[5] what went wrong
-- ('' if nothing)   ARGV[6] seconds to wait before a retry   ARGV[7] WEBHOOK_MAX_AGE: no attempt starts later after
-- the batch finished   ARGV[8] the channel
-- Returns {state now, next attempt at (unix seconds) or ''}, or {''} if overtaken.
local c = ARGV[8] .. '_'
local f = redis.call('HMGET', KEYS[1], c .. 'state', c .. 'attempts', c .. 'due_at')
if f[1] ~= 'delivering' or tonumber(f[2]) ~= tonumber(ARGV[2]) then return {''} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local verdict, problem = ARGV[3], ARGV[5]
redis.call('HDEL', KEYS[1], c .. 'lease_until', c .. 'last_status', c .. 'last_error')
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], c .. 'last_status', ARGV[4]) end
if verdict == 'retry' then
  local at = now + tonumber(ARGV[6])
  if at <= tonumber(f[3]) + tonumber(ARGV[7]) then
    redis.call('HSET', KEYS[1], c .. 'state', 'pending', c .. 'next_at', at)
    if problem ~= '' then redis.call('HSET', KEYS[1], c .. 'last_error', problem) end
    redis.call('ZADD', KEYS[2], at, ARGV[1])
    return {'pending', tostring(at)}
  end
  if problem ~= '' then problem = problem .. '; ' end
  problem = problem .. 'given up: WEBHOOK_MAX_AGE (' .. ARGV[7] .. ' s) passed since the batch finished'
end
local state = 'failed'
if verdict == 'delivered' then state = 'delivered' end
redis.call('HSET', KEYS[1], c .. 'state', state)
if problem ~= '' then redis.call('HSET', KEYS[1], c .. 'last_error', problem) end
redis.call('ZREM', KEYS[2], ARGV[1])
return {state, ''}
"""


@dataclass(frozen=True)
class Attempt:
    """An attempt claimed: its number (from 1) and the batch's fields (destination, delivery id, counts, links)."""

    number: int
    fields: dict[str, str]


@dataclass(frozen=True)
class Recorded:
    state: CallbackState
    next_attempt_at: float | None = None
    """When the retry is due (unix seconds, Redis' clock), for a delivery pending again."""


class Deliveries:
    """The deliveries of the Redis at `url`, each method for one channel (the callback's unless told)."""

    def __init__(self, url: str) -> None:
        self._redis = connect(url)
        self._claim = self._redis.register_script(_CLAIM)
        self._record = self._redis.register_script(_RECORD)

    def close(self) -> None:
        self._redis.close()

    def claim(self, batch_id: str, *, attempts_seen: int, lease: float,
              channel: Channel = Channel.CALLBACK) -> Attempt | None:
        """Start the next attempt if `attempts_seen` is still the number made and no attempt holds the lease; None
        otherwise (the caller has nothing to do: another task has it, or it is over)."""
        answer = self._claim(keys=[batch_key(batch_id), deliveries_due_key(channel)],
                             args=[batch_id, attempts_seen, lease, channel.value])
        if answer[0] != "claimed":
            return None
        fields = cast(dict[str, str], self._redis.hgetall(batch_key(batch_id)))  # a decoding client
        return Attempt(number=int(answer[1]), fields=fields)

    def record(self, batch_id: str, attempt: int, verdict: Verdict, *, status: int | None = None, error: str = "",
               retry_wait: float, max_age: float, channel: Channel = Channel.CALLBACK) -> Recorded | None:
        """Record how attempt `attempt` ended; None if a later attempt had overtaken it (nothing recorded)."""
        answer = self._record(keys=[batch_key(batch_id), deliveries_due_key(channel)], args=[
            batch_id, attempt, verdict.value, "" if status is None else status, error, retry_wait, max_age,
            channel.value])
        if not answer[0]:
            return None
        return Recorded(CallbackState(answer[0]), float(answer[1]) if answer[1] else None)

    def overdue(self, *, after: float = RESEND_AFTER, channel: Channel = Channel.CALLBACK) -> dict[str, int]:
        """The deliveries `after` seconds past their moment, each with its attempts made (what a task for it must
        name); each is pushed `after` seconds on, so that the next sweep does not send it again at once. Entries of
        expired batches and of finished deliveries leave the registry."""
        due_registry = deliveries_due_key(channel)
        seconds, micros = self._redis.time()
        now = seconds + micros / 1_000_000
        batch_ids = cast(list[str], self._redis.zrangebyscore(due_registry, "-inf", now - after))
        if not batch_ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for batch_id in batch_ids:
            pipe.hmget(batch_key(batch_id), [f"{channel}_state", f"{channel}_attempts"])
        due: dict[str, int] = {}
        finished: list[str] = []
        for batch_id, (state, attempts) in zip(batch_ids, pipe.execute(), strict=True):
            if state in (CallbackState.PENDING, CallbackState.DELIVERING):
                due[batch_id] = int(attempts)
            else:
                finished.append(batch_id)  # expired, or delivered or failed
        if finished:
            self._redis.zrem(due_registry, *finished)
        if due:
            # gt: a claim that moved an entry further on meanwhile (its lease) keeps its own moment.
            self._redis.zadd(due_registry, dict.fromkeys(due, now), xx=True, gt=True)
        return due


def first_attempt_sender(app: Celery) -> Callable[[str, Channel], None]:
    """What a JobStore calls when one of its steps made a batch's delivery due (on_delivery_due): send its first
    delivery task. If the broker does not take it, the reconciler sends it: the batch is in the due registry."""
    def send(batch_id: str, channel: Channel) -> None:
        try:
            send_delivery_task(batch_id, 0, app=app, channel=channel)
        except Exception as error:  # the job's result is stored: a lost task must not undo that
            log.warning("the %s of batch %s is due and its task was not sent (%s): the reconciler will send it",
                        channel.value, batch_id, error)
    return send
