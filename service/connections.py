"""Connections to Redis that outlive a dead socket: every client of the job store, the worker registry and fair
share is made here, with settings chosen for a Redis that restarts, fails over, or sits behind a network that
drops a connection without a word (a NAT or firewall timing it out, a partition).

- `health_check_interval`: a connection idle this long is PINGed before it is used, so a socket that died while
  idle (the usual case after a partition heals) is found and replaced before a command is lost on it.
- `socket_keepalive`: the kernel probes idle connections too, so a silently dead peer is noticed at all.
- `socket_timeout` (synchronous clients): a command that gets no answer fails after this long instead of hanging
  a request or a task for ever; it is far above any command's time (the largest, a bulk admission, takes well
  under a second). The API's asyncio client has none: its long-polls wait up to 30 s by design.
- `socket_connect_timeout`: an unreachable Redis is reported in seconds, and the API answers 503 then.
- `retry` on ConnectionError and TimeoutError, once: a command that failed on a broken connection is sent again on
  a fresh one, so a stale socket costs a reconnect, not a failed task; once only, so that a Redis that is really
  away is reported within seconds (SOCKET_TIMEOUT + CONNECT_TIMEOUT). The first sending may have been carried out
  with only its answer lost, so a command sent on these clients must do the same when sent twice: every script
  names its write and answers a repeat as it answered the first (service/scripts.py); the rest are reads and
  writes that set rather than add. Counters are the exception, sent on a client made with `retries=0`.
"""

from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

HEALTH_CHECK_INTERVAL = 15
"""Seconds a connection may sit idle before it is checked with a PING on its next use."""

SOCKET_TIMEOUT = 3
"""Seconds a command of a synchronous client may wait for its answer."""

CONNECT_TIMEOUT = 2
"""Seconds a connection may take to open."""

RETRIES = 1
"""Times a command is sent again, on a new connection, after a connection error or a time-out."""

_RETRY_ON = [RedisConnectionError, RedisTimeoutError]


def _options() -> dict[str, Any]:
    return {"health_check_interval": HEALTH_CHECK_INTERVAL, "socket_keepalive": True,
            "socket_connect_timeout": CONNECT_TIMEOUT, "retry_on_error": _RETRY_ON}


def connect(url: str, *, decode: bool = True, retries: int = RETRIES) -> Redis:
    """A client of the Redis at `url`; `decode`: replies as str (False: bytes, for image data); `retries`: times a
    command is sent again after a connection error (0 for a write that must not be carried out twice)."""
    return Redis.from_url(url, decode_responses=decode, socket_timeout=SOCKET_TIMEOUT,
                          retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries), **_options())


def connect_async(url: str) -> AsyncRedis:
    """An asyncio client (the API's long-polls), decoding replies, with the same resilience but no read timeout."""
    return AsyncRedis.from_url(url, decode_responses=True,
                               retry=AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES), **_options())
