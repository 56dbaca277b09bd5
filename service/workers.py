"""Which model processes are alive and what they serve: each announces itself on a heartbeat, and the
announcement lapses WORKER_TTL after the last one, so a worker that vanished drops out by itself."""

from redis import Redis

from service.jobstore import now_iso
from service.keys import WORKER_TTL, worker_key


class WorkerRegistry:
    def __init__(self, url: str) -> None:
        self._redis: Redis = Redis.from_url(url, decode_responses=True)

    def close(self) -> None:
        self._redis.close()

    def announce(self, name: str, info: dict[str, str]) -> None:
        """Say (again) that this model process is alive and what it serves; call every WORKER_TTL / 3."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(worker_key(name), mapping={**info, "name": name, "seen_at": now_iso()})
            pipe.expire(worker_key(name), WORKER_TTL)
            pipe.execute()

    def retire(self, name: str) -> None:
        self._redis.delete(worker_key(name))

    def live(self) -> list[dict[str, str]]:
        """The announcements of the model processes alive now."""
        names = list(self._redis.scan_iter(worker_key("*"), count=1000))
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(name)
        return [info for info in pipe.execute() if info]

