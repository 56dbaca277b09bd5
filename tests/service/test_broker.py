"""service/broker.py: a worker whose ack or reject fails still frees its prefetch slot, and Redis keeps the message.

No worker and no model: kombu's own consumer path (a SimpleQueue on the service's transport, prefetch 1, as a
Celery worker's pool process takes a task) against real redis-servers that the tests start on ports of their own,
without persistence, and fail: a failover that leaves the worker talking to a read-only replica, and a Redis that
is gone.
"""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Message
from kombu.simple import SimpleQueue
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.retry import Retry

from service.broker import QoS
from tests.processes import free_port, wait_until

TRANSPORT = "service.broker:Transport"
"""The transport, named as service/queue.py names it to Celery."""

QUEUE = "test-broker"

FINISH = {
    "ack": lambda message: message.ack(),                 # a task that succeeded (acks_late)
    "reject": lambda message: message.reject(),           # a task that failed (task_acks_on_failure_or_timeout off)
    "requeue": lambda message: message.reject(requeue=True),  # a task handed back (Reject(requeue=True))
}
"""The three ways a worker finishes a message, each of which writes to Redis."""


class RedisServer:
    """A redis-server of the test's own, without persistence; replicas sync at once (no diskless-sync delay)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = self.connect()

    def connect(self) -> Redis:
        # No retries: with redis-py's default backoff, each call to a stopped server would take seconds to fail.
        return Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def start(self) -> None:
        self.folder.mkdir()
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(self.port),
                        "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0",
                        "--dir", str(self.folder)], check=True, stdout=subprocess.DEVNULL)
        wait_until(self.answers, timeout=10, what="redis-server to start")

    def shutdown(self) -> None:
        self.client.shutdown(nosave=True, now=True)  # NOW: a primary does not wait for its replicas
        wait_until(lambda: not self.answers(), timeout=10, what="redis-server to stop")
        self.client.close()

    def answers(self) -> bool:
        with self.connect() as client:
            try:
                return bool(client.ping())
            except Exception:
                return False

    def replicate(self, primary: "RedisServer") -> None:
        """Become a replica of `primary` (read-only) and return once it has its data."""
        self.client.replicaof("127.0.0.1", primary.port)
        wait_until(lambda: self.client.info("replication")["master_link_status"] == "up", timeout=10,
                   what=f"the replica on {self.port} to sync")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """Two redis-servers, shut down at the end whatever the test did to them."""
    started: list[RedisServer] = []
    try:
        for name in ("a", "b"):
            server = RedisServer(tmp_path / name)
            server.start()
            started.append(server)
        yield started[0], started[1]
    finally:
        for server in started:
            if server.answers():
                server.shutdown()


@pytest.fixture
def taken(servers: tuple[RedisServer, RedisServer]) -> Iterator[tuple[Message, QoS]]:
    """A message taken from server A through the service's transport and not yet acknowledged, on a channel of
    prefetch 1: the worker's one slot is full."""
    primary, _ = servers
    with Connection(primary.url, transport=TRANSPORT) as connection:
        queue: SimpleQueue = connection.SimpleQueue(QUEUE)
        queue.consumer.qos(prefetch_count=1)
        queue.put({"job_ids": ["j1"]})
        message = queue.get(timeout=5)
        qos = message.channel.qos
        assert isinstance(qos, QoS)
        assert not qos.can_consume()
        assert primary.client.hexists(qos.unacked_key, message.delivery_tag)
        yield message, qos
        queue.close()


def still_unacked(server: RedisServer, qos: QoS, tag: str) -> bool:
    """Whether Redis still holds the message as taken and unacknowledged: where the visibility timeout finds it."""
    in_hash = server.client.hexists(qos.unacked_key, tag)
    in_index = server.client.zscore(qos.unacked_index_key, tag) is not None
    return bool(in_hash) and in_index


@pytest.mark.parametrize("finish", FINISH)
def test_a_finish_refused_by_a_read_only_replica_frees_the_slot_and_keeps_the_message(
        finish: str, servers: tuple[RedisServer, RedisServer], taken: tuple[Message, QoS]):
    old, new = servers
    message, qos = taken
    # A failover: B, replicating A, is promoted, and A is made its replica; the worker still talks to A.
    new.replicate(old)
    wait_until(lambda: still_unacked(new, qos, message.delivery_tag), timeout=10,
               what="the unacked message to reach the replica")
    new.client.replicaof("NO", "ONE")
    old.replicate(new)

    with pytest.raises(ReadOnlyError):
        FINISH[finish](message)

    assert qos.can_consume()  # the worker takes its next task
    # Nothing was written: the message is still taken in the new primary (and in A, its replica), so the visibility
    # timeout hands it out again; it is in no queue meanwhile.
    for server in (new, old):
        assert still_unacked(server, qos, message.delivery_tag)
        assert server.client.llen(QUEUE) == 0


@pytest.mark.parametrize("finish", FINISH)
def test_a_finish_on_a_redis_that_is_gone_frees_the_slot(finish: str, servers: tuple[RedisServer, RedisServer],
                                                         taken: tuple[Message, QoS]):
    message, qos = taken
    servers[0].shutdown()

    with pytest.raises(RedisConnectionError):
        FINISH[finish](message)

    assert qos.can_consume()
