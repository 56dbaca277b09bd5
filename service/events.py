"""Celery task events (task-received, -started, -succeeded, -failed) for Flower, sent without holding a worker up.

Celery sends a worker's task events from the worker's main loop: the consumer buffers them and its event loop
flushes the buffer (celery/worker/consumer/events.py, EventDispatcher.flush), publishing on a broker connection
with the broker's socket timeout (10 s, retried once on a time-out). An event that fails is kept in an unbounded
buffer and sent again at every flush. Through a silent partition each flush would hold the main loop for those
time-outs, longer with every event kept: the stall Celery's event heartbeat caused, and the reason workers run
`--without-heartbeat` (docs/deploy.md, "Failure modes").

Here the worker's dispatcher only puts each event in a bounded queue, which never waits. One thread per process
publishes the queue on a connection of its own, with short time-outs; what it cannot publish (the broker does not
answer) it drops and counts, and it does not try again for a while. Events are for watching the work: the job
store is its record, so losing some through an outage costs nothing but a gap in Flower.
"""

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from celery import Celery
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from kombu import Connection, Exchange, Producer

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
"""Events waiting for the publishing thread; past this, a new event is dropped (the broker has been away long)."""
PUBLISH_TIMEOUT = 2.0
"""Seconds the publishing thread waits to connect, and for each answer of the broker."""
PAUSE_AFTER_FAILURE = 5.0
"""Seconds after a failed publish during which events are dropped without trying: a broker that does not answer
is not asked once per event."""


@dataclass(frozen=True)
class _Event:
    body: Any  # one event, or a list of them (Celery's `task.multi`)
    routing_key: str
    exchange: Exchange
    headers: dict[str, str]
    serializer: str
    delivery_mode: int


class EventPublisher:
    """Publishes queued events on a thread of its own; `put` never waits."""

    def __init__(self, connect: Callable[[], Connection]) -> None:
        self._connect = connect
        self._queue: queue.Queue[_Event] = queue.Queue(maxsize=QUEUE_SIZE)
        self._lock = threading.Lock()
        self._dropped = 0
        self.dropped_total = 0
        """Events dropped since the process started (the queue was full, or the broker did not take them)."""
        threading.Thread(target=self._run, name="pneuradnet-task-events", daemon=True).start()

    def put(self, event: _Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._drop()

    def _run(self) -> None:
        connection: Connection | None = None
        producer: Producer | None = None
        paused_until = 0.0
        while True:
            event = self._queue.get()
            if time.monotonic() < paused_until:
                self._drop()
                continue
            try:
                if producer is None:
                    connection = self._connect()
                    connection.connect()  # one try, within PUBLISH_TIMEOUT (kombu's default retries for ever)
                    producer = Producer(connection)
                producer.publish(event.body, routing_key=event.routing_key, exchange=event.exchange.name,
                                 declare=[event.exchange], headers=event.headers, serializer=event.serializer,
                                 delivery_mode=event.delivery_mode, retry=False)
            except Exception as error:  # whatever the broker's client raises, the event is dropped, never the thread
                self._drop()
                log.warning("task events are dropped for %g s: the broker did not take one (%s)",
                            PAUSE_AFTER_FAILURE, error)
                if connection is not None:
                    _close_quietly(connection)
                connection, producer, paused_until = None, None, time.monotonic() + PAUSE_AFTER_FAILURE
            else:
                self._report_drops()

    def _drop(self) -> None:
        with self._lock:
            self._dropped += 1
            self.dropped_total += 1

    def _report_drops(self) -> None:
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        if dropped:
            log.warning("%d task events were dropped while the broker could not take them (Flower misses them; "
                        "the jobs are not affected)", dropped)


def _close_quietly(connection: Connection) -> None:
    try:
        connection.close()
    except Exception as error:  # a connection already broken may fail to close: it is dropped all the same
        log.debug("closing the events connection failed: %s", error)


_publishers: dict[int, EventPublisher] = {}
_publishers_lock = threading.Lock()


def publisher_for(app: Celery) -> EventPublisher:
    """This process's publisher (made on first use: a pool process forked from a parent gets its own thread)."""
    with _publishers_lock:
        pid = os.getpid()
        if pid not in _publishers:
            _publishers[pid] = EventPublisher(lambda: _events_connection(app))
        return _publishers[pid]


def _events_connection(app: Celery) -> Connection:
    """A broker connection for events alone, with short time-outs and no retry on a time-out."""
    connection: Connection = app.connection_for_write(transport_options={
        "socket_timeout": PUBLISH_TIMEOUT, "socket_connect_timeout": PUBLISH_TIMEOUT, "retry_on_timeout": False})
    return connection


class QueuedEventDispatcher(EventDispatcher):
    """Celery's event dispatcher, whose publishing hands the event to this process's EventPublisher."""

    # Set by EventDispatcher.__init__ (celery-types leaves them out).
    exchange: Exchange
    headers: dict[str, str]
    serializer: str
    delivery_mode: int

    def _publish(self, event: Any, producer: Any, routing_key: str, retry: bool = False,
                 retry_policy: Any = None, **_: Any) -> None:
        if producer is None:  # the dispatcher is closed or disabled: Celery sends nothing then either
            return
        queued = _Event(event, routing_key, self.exchange, self.headers, self.serializer, self.delivery_mode)
        publisher_for(cast(Celery, self.app)).put(queued)


class QueuedEvents(Events):
    """`app.events` whose dispatcher never publishes on the caller's thread (Celery(events=...))."""

    dispatcher_cls = "service.events:QueuedEventDispatcher"
