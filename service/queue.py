"""The task queue: the Celery application, its broker settings, and sending a task.

The API only enqueues; workers (worker.app) consume. Importing this module is cheap (no TensorFlow): the task
code lives in worker.tasks, named here as a string so that only Celery itself loads it, in workers. What is known
of kombu's own Redis layout lives in service/broker.py; how jobs are cut into tasks, in service/dispatch.py.
"""

from collections.abc import Sequence

from celery import Celery
from kombu import Queue
from kombu.exceptions import OperationalError

from service.connections import CONNECT_TIMEOUT, HEALTH_CHECK_INTERVAL
from service.faults import BROKER_SEND_FAILS, injected
from service.jobstore import Lane
from service.settings import Settings

BULK_QUEUE = "pneuradnet"
"""The bulk lane's queue (the name the service always had, so that tasks queued before lanes still run)."""
INTERACTIVE_QUEUE = "pneuradnet.interactive"

QUEUES = {Lane.INTERACTIVE: INTERACTIVE_QUEUE, Lane.BULK: BULK_QUEUE}
"""Each lane's Celery queue, in the order workers look into them: interactive first."""

WEBHOOK_QUEUE = "pneuradnet.webhooks"
"""Callback deliveries (worker/webhooks.py): a queue of their own, taken after interactive work and before bulk
work, so that a finished batch's callback never waits behind another batch's thousands of images; a delivery takes
a worker at most a few seconds (WEBHOOK_TIMEOUT)."""

CONSUMED_QUEUES = (INTERACTIVE_QUEUE, WEBHOOK_QUEUE, BULK_QUEUE)
"""Every queue a worker consumes, in the order it looks into them."""

CLASSIFY_TASK = "pneuradnet.classify"
DELIVER_TASK = "pneuradnet.deliver_callback"
REPORT_TASK = "pneuradnet.deliver_report"

HARD_LIMIT_MARGIN = 10
"""Seconds past JOB_TIMEOUT after which a task's process is killed rather than asked to stop."""

LEASE_MARGIN = 5
"""Seconds past a task's hard time limit before its jobs' lease ends: by then a live worker has stopped the task,
so a job still running is one whose worker is gone, and another may claim it."""

VISIBILITY_MARGIN = 30
"""Seconds the broker waits beyond JOB_TIMEOUT before it hands an unacknowledged task to another worker: past the
lease, so that the task handed out again finds its jobs free to claim."""

RESTORE_INTERVAL = 5
"""Seconds between a worker's sweeps for tasks whose worker vanished without acknowledging them."""

RESTORE_MUTEX_EXPIRY = 30
"""Seconds a worker may hold the broker's lock on that sweep (kombu's default, 300, would let a worker killed while
holding it stop every redelivery for five minutes; a sweep takes milliseconds)."""

BROKER_SOCKET_TIMEOUT = 10
"""Seconds a broker command may wait for its answer."""


def lease_seconds(settings: Settings) -> int:
    """How long a claim holds its jobs: the longest a task may run, and the margin after its hard time limit."""
    return settings.job_timeout + HARD_LIMIT_MARGIN + LEASE_MARGIN


def visibility_timeout(settings: Settings) -> int:
    """Seconds after which the broker hands a task that was taken and never acknowledged to another worker."""
    return settings.job_timeout + VISIBILITY_MARGIN


def make_celery(settings: Settings) -> Celery:
    # Task events go through service/events.py, which never publishes on the worker's main loop.
    app = Celery("pneuradnet", broker=settings.redis_url, include=["worker.tasks", "worker.webhooks", "worker.reports"],
                 events="service.events:QueuedEvents")
    app.conf.update(
        task_default_queue=BULK_QUEUE,
        # Workers consume both lanes and the callbacks; with the "priority" order, each poll (one BRPOP over the
        # lists) takes from the interactive queue whenever it holds a task, then callbacks, then the bulk queue.
        task_queues=[Queue(name) for name in CONSUMED_QUEUES],
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in the job store, not in Celery
        # A task is acknowledged only once its jobs are stored; if the worker dies, the task runs again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        # At JOB_TIMEOUT the task fails its unfinished jobs; a child stuck past the hard limit is killed, its
        # task left unacknowledged and so redelivered, until MAX_DELIVERIES fails its jobs.
        task_soft_time_limit=settings.job_timeout,
        task_time_limit=settings.job_timeout + HARD_LIMIT_MARGIN,
        # A task that raises is rejected without being requeued, not acknowledged: the task catches everything an
        # image can do, so what escapes is the service's own failure. A lost job store is the one it hands back
        # (worker.tasks: Reject with requeue); anything else gives its jobs back to the queue, where the
        # reconciler finds them, never to a task that loops on the same failure.
        task_acks_on_failure_or_timeout=False,
        # When the broker connection drops, a running task goes on: it stores its results as soon as Redis answers
        # again (worker/processing.py), rather than being killed with its forward pass done and its jobs leased to
        # a dead process until their lease ends (the fault campaign saw each such kill cost a lease and the work
        # twice). It cannot be acknowledged on the new connection: its message, still unacknowledged in Redis (kept
        # across a restart by the append-only file), comes back after the visibility timeout and finds its jobs
        # finished.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Reconnect to the broker for as long as it takes (Celery's default gives up after 100 tries and the
        # worker exits); the job store's clients reconnect by themselves (service/connections.py).
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        # The redis transport re-delivers an unacknowledged task after the visibility timeout (default 1 h):
        # keep it just above the longest a task may run, and look for such tasks often.
        broker_transport_options={
            "queue_order_strategy": "priority",
            "visibility_timeout": visibility_timeout(settings),
            "unacked_restore_interval": RESTORE_INTERVAL,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": RESTORE_MUTEX_EXPIRY,
            # The same reasons as the job store's connections (service/connections.py): idle sockets checked
            # before use, dead peers probed, a silent one noticed within BROKER_SOCKET_TIMEOUT (above the 1 s
            # BRPOP poll, so an idle queue is never mistaken for a dead Redis).
            "health_check_interval": HEALTH_CHECK_INTERVAL,
            "socket_keepalive": True,
            "socket_timeout": BROKER_SOCKET_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "retry_on_timeout": True,
        },
        broker_connection_retry_on_startup=True,
        # kombu's Redis transport, whose worker never stays full after a failed ack (named, not imported: that
        # module reads this one's queue names).
        broker_transport="service.broker:Transport",
        # Each pool process loads the model in worker_process_init, which takes longer than Celery's 4 s default.
        worker_proc_alive_timeout=120,
        worker_hijack_root_logger=False,
        # Workers send task-received, -started, -succeeded and -failed (Flower lists them); the API sends no
        # task-sent: it would cost every enqueue a second publish, and the queue depth shows what waits.
        worker_send_task_events=settings.task_events,
    )
    return app


def send_classify_task(job_ids: Sequence[str], *, app: Celery, lane: Lane = Lane.BULK, chunk: str | None = None,
                       owner: str = "") -> None:
    """Enqueue one task that classifies these jobs in one batch (on the broker `app` is bound to); a bulk chunk's
    task names the chunk and its owner, so that its worker releases the owner's next chunk when it is done."""
    _refuse_if_injected()
    app.send_task(CLASSIFY_TASK, args=[list(job_ids)], kwargs={"chunk": chunk, "owner": owner} if chunk else None,
                  queue=QUEUES[lane])


def send_delivery_task(batch_id: str, attempts_seen: int, *, app: Celery, countdown: float | None = None,
                       channel: str = "callback") -> None:
    """Enqueue an attempt at one of a batch's deliveries (service/deliveries.py; a channel of service/channels.py),
    at once or `countdown` seconds on; `attempts_seen`, the attempts made so far, lets only one task of those sent
    for one attempt make it. Reports go on the callbacks' queue: an attempt takes a worker seconds at most."""
    _refuse_if_injected()
    if channel == "callback":
        app.send_task(DELIVER_TASK, args=[batch_id, attempts_seen], queue=WEBHOOK_QUEUE, countdown=countdown)
    else:
        app.send_task(REPORT_TASK, args=[batch_id, channel, attempts_seen], queue=WEBHOOK_QUEUE, countdown=countdown)


def _refuse_if_injected() -> None:
    if injected(BROKER_SEND_FAILS):
        raise OperationalError("the broker refused the task (a fault injected by PNEURADNET_FAULT_FILE)")
