"""The job store as the campaign and its checker read it: by literal key names, never through the service's code
(what a key holds is read as the README and service/keys.py document it); the books that must be empty at rest."""

from collections.abc import Callable

from redis import Redis

PREFIX = "pneuradnet:"
"""Every key of the job store begins so (service/keys.py)."""
FINISHED = frozenset({"succeeded", "failed", "canceled"})
"""The terminal statuses: a job in one never moves again."""
STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
"""Every status a job may have, each counted in its batch's record."""
BOOKS = {
    "admissions (MAX_QUEUE reservations)": ("hlen", f"{PREFIX}admissions"),
    "running registry": ("zcard", f"{PREFIX}registry:running"),
    "bulk queued registry": ("zcard", f"{PREFIX}registry:queued"),
    "interactive queued registry": ("zcard", f"{PREFIX}registry:queued:interactive"),
    "callbacks due": ("zcard", f"{PREFIX}webhooks:due"),
    "fair-share keys with work": ("scard", f"{PREFIX}fair:owners"),
    "broker: bulk queue": ("llen", "pneuradnet"),
    "broker: interactive queue": ("llen", "pneuradnet.interactive"),
    "broker: callbacks queue": ("llen", "pneuradnet.webhooks"),
    "broker: unacknowledged": ("hlen", "unacked"),
}
"""Every book that must be empty at rest: its command for the number of entries, and its key."""
FAIR_BOOKS = {"fair-share in flight": f"{PREFIX}fair:in-flight:*", "fair-share pending": f"{PREFIX}fair:pending:*",
              "fair-share chunks": f"{PREFIX}fair:chunks:*"}
"""The per-key fair-share books, by pattern: every key's must be empty at rest."""


def job_statuses(redis: Redis, job_ids: list[str]) -> list[str | None]:
    """Each job's status now (None for a job with no record), in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(f"{PREFIX}job:{job_id}", "status")
    return pipe.execute()


def read_books(redis: Redis) -> dict[str, int]:
    """How many entries each book holds now."""
    pipe = redis.pipeline(transaction=False)
    for command, key in BOOKS.values():
        getattr(pipe, command)(key)
    books = dict(zip(BOOKS, pipe.execute(), strict=True))
    for name, pattern in FAIR_BOOKS.items():
        books[name] = sum(_size(redis, key) for key in redis.scan_iter(pattern, count=1000))
    return books


def _size(redis: Redis, key: str) -> int:
    """Entries of a key of any type (0 for one that is gone, 1 for a string)."""
    sizes: dict[str, Callable[[str], int]] = {"list": redis.llen, "zset": redis.zcard, "hash": redis.hlen,
                                              "set": redis.scard, "none": lambda _: 0}
    return sizes.get(redis.type(key), lambda _: 1)(key)
