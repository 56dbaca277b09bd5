"""What the service knows of kombu's Redis broker: its transport, with one change, and how to read its messages.

The change: a worker's ack or reject that fails never keeps it from taking tasks.

A worker takes at most one unacknowledged task per pool process (prefetch 1). kombu counts a task as taken until
its ack or reject has reached Redis, and it forgets that count only when a lost connection restarts the consumer.
A worker cut off from Redis while it finishes a task, though, fails to ack or reject, and then sees no lost
connection at all: it does not read from the broker while it is full, and redis-py reconnects its other clients by
itself. It would wait forever for a slot that never frees, while its heartbeat says it is alive (seen in
tests/hosts/test_worker_cut_off.py; celery/celery#8030 and #8091 report the same). So would a worker whose Redis
a failover has turned into a read-only replica: its ack gets ReadOnlyError, on a connection that is fine.

Here an ack or reject (requeued or not) that raises anything at all (ConnectionError, TimeoutError, ReadOnlyError
or any other error of the transport) still frees the slot, and the error is raised on as before. Nothing is lost
that way: the message stays in Redis' unacked index, and after the visibility timeout the broker hands it out
again. Its jobs decide whether it runs again: a job that already finished is never run a second time.

Reading the messages (`messages_in_broker`) lets the reconciler tell a job whose task is still on the broker from
one whose task is lost; counting a queue's (`tasks_waiting`) lets a bulk task make way for interactive work.

Both rely on kombu's internals (its Redis QoS, the local count in virtual.QoS freed directly, the layout of its
messages in Redis), so pyproject.toml bounds kombu to the 5.7 they were written for; tests/service/test_broker.py
fails real Redis servers under the transport.
"""

import base64
import json
from dataclasses import dataclass

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import QoS as LocalQoS
from redis import Redis

from service.jobstore import Lane
from service.queue import CLASSIFY_TASK, QUEUES


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, whose ack and reject free the worker's prefetch slot even when Redis refuses them."""

    def ack(self, delivery_tag: str) -> None:
        try:
            super().ack(delivery_tag)
        except Exception:
            LocalQoS.ack(self, delivery_tag)  # the slot is free; Redis keeps the message for the visibility timeout
            raise

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except Exception:
            LocalQoS.ack(self, delivery_tag)
            raise


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


UNACKED = "unacked"
"""kombu's Redis hash of the messages workers have taken and not acknowledged (its transport's `unacked_key`)."""


@dataclass(frozen=True)
class ClassifyMessage:
    """A classify task on the broker: the jobs it names and, for a bulk chunk, the chunk's id."""

    job_ids: list[str]
    chunk: str | None


def tasks_waiting(redis: Redis, lane: Lane) -> int:
    """Tasks in a lane's queue that no worker has taken yet (kombu keeps a queue as a Redis list of its name)."""
    return int(redis.llen(QUEUES[lane]))


def messages_in_broker(redis: Redis) -> list[ClassifyMessage]:
    """Every classify task on the broker, waiting in a lane's queue or taken by a worker and not acknowledged, read
    in one transaction (kombu moves a message from its unacked hash back to a queue in one too, so it is seen in
    one place or the other, never in neither). Read from kombu's Redis layout: a message is a JSON envelope whose
    base64 body is Celery's [args, kwargs, embed]; an unacknowledged one is kept as [message, exchange, routing
    key]."""
    pipe = redis.pipeline(transaction=True)
    for queue in QUEUES.values():
        pipe.lrange(queue, 0, -1)
    pipe.hvals(UNACKED)
    *queued, unacked = pipe.execute()
    envelopes = [json.loads(raw) for raws in queued for raw in raws] + [json.loads(raw)[0] for raw in unacked]
    messages = []
    for envelope in envelopes:
        if envelope.get("headers", {}).get("task") != CLASSIFY_TASK:
            continue
        args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        messages.append(ClassifyMessage(job_ids=list(args[0]), chunk=(kwargs or {}).get("chunk")))
    return messages
