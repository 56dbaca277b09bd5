"""kombu's Redis transport with one change: a worker's ack or reject that fails never keeps it from taking tasks.

A worker takes at most one unacknowledged task per pool process (prefetch 1). kombu counts a task as taken until
its ack or reject has reached Redis, and it forgets that count only when a lost connection restarts the consumer.
A worker cut off from Redis while it finishes a task, though, fails to ack or reject, and then sees no lost
connection at all: it does not read from the broker while it is full, and redis-py reconnects its other clients by
itself. It would wait forever for a slot that never frees, while its heartbeat says it is alive (seen in
tests/hosts/test_worker_cut_off.py; celery/celery#8030 and #8091 report the same).

Here a failed ack or reject still frees the slot. Nothing is lost that way: the message stays in Redis' unacked
index, and after the visibility timeout the broker hands it out again. Its jobs decide whether it runs again: a
job that already finished is never run a second time.
"""

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import QoS as LocalQoS
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

TRANSPORT = "service.broker:Transport"
"""What Celery's `broker_transport` names (service/queue.py)."""


class QoS(kombu_redis.QoS):
    def ack(self, delivery_tag: str) -> None:
        try:
            super().ack(delivery_tag)
        except (RedisConnectionError, RedisTimeoutError):
            LocalQoS.ack(self, delivery_tag)  # the slot is free; Redis keeps the message for the visibility timeout
            raise

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except (RedisConnectionError, RedisTimeoutError):
            LocalQoS.ack(self, delivery_tag)
            raise


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
