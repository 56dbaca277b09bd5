"""Celery glue: each pool process loads the model once, right after the fork, and runs chunks of jobs.

The prefork pool (not solo) is the choice: the parent stays small and never imports TensorFlow, a child
killed by a bad input is replaced while its task is redelivered (reject_on_worker_lost), the hard time limit
can stop a stuck child, and WORKER_CONCURRENCY children scale a worker across cores.

What a process loads (store, classifier, explainer, its name in the worker registry) is held by the task
itself, Celery's pattern for per-process resources: a task object is created once per process and lives as long
as it, so `ClassifyTask.resources` is loaded on first use and kept. The parent never uses it; each child uses it
in worker_process_init, so the model is loaded before the first task arrives rather than during it.

Explanations (jobs submitted with explain) need TensorFlow's gradients whatever the serving runtime: each pool
process loads its Grad-CAM explainer when its first such job arrives, never before; with EXPLAIN_ENABLED off it
has none, and never loads TensorFlow for it.
"""

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from functools import cache, partial
from typing import cast

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback  # type: ignore[attr-defined]
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown
from celery.worker.request import Request
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pneuradnet.classifier import Classifier
from pneuradnet.explain import GradCam
from pneuradnet.manifest import sha256_of
from service.broker import tasks_waiting
from service.connections import connect
from service.deliveries import first_attempt_sender
from service.dispatch import send_bulk_chunks
from service.fairshare import FairShare, window_for
from service.images import JobImages, images_for
from service.imagestore import ObjectStoreUnavailable
from service.jobstore import JobStore, Lane, new_token, now_iso
from service.keys import WORKER_TTL
from service.logs import configure_logging
from service.metrics import observe
from service.problems import problem
from service.queue import CLASSIFY_TASK, lease_seconds, send_classify_task
from service.reconciler import Reconciler
from service.settings import Settings, get_settings
from service.workers import WorkerRegistry
from worker.app import celery_app
from worker.processing import LazyExplainer, fail_held, process_jobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessResources:
    """What one model process loads once and every task it runs uses."""

    name: str
    """`host:pid`, this process's key in the worker registry and the `worker` of the jobs it runs."""
    store: JobStore
    broker: Redis
    images: JobImages
    registry: WorkerRegistry
    fair_share: FairShare
    reconciler: Reconciler
    classifier: Classifier
    explainer: LazyExplainer | None
    """None when explanations are off: jobs with explain then get no heatmap, and TensorFlow is never loaded for it."""
    announcement: dict[str, str]
    """What the registry says this process serves; repeated by the heartbeat."""


def load_resources(settings: Settings) -> ProcessResources:
    """Load the model, warm it up, and announce this process in the worker registry."""
    store = JobStore(settings.redis_url, ttl=settings.job_ttl, budget_bytes=settings.redis_budget_bytes,
                     on_delivery_due=first_attempt_sender(celery_app))
    images = images_for(settings, store)
    registry = WorkerRegistry(settings.redis_url)
    fair_share = FairShare(settings.redis_url, ttl=settings.job_ttl)
    reconciler = Reconciler(url=settings.redis_url, store=store, images=images, workers=registry,
                            fair_share=fair_share, celery=celery_app, max_batch=settings.max_batch,
                            bulk_chunk=settings.bulk_chunk, sweep_interval=settings.sweep_interval)
    classifier = Classifier.load(
        settings.model_manifest,
        model_path=settings.model_path,
        runtime=settings.inference_runtime,
        threads=settings.inference_threads,
        max_batch=settings.max_batch,
        cache_dir=settings.model_cache_dir,
        shape_limits=settings.shape_limits,
    )
    classifier.warm_up()
    explainer = None
    if settings.explain_enabled:
        explainer = LazyExplainer(lambda: GradCam(classifier.model_file, classifier.manifest,
                                                  threads=settings.inference_threads))
    manifest = classifier.manifest
    announcement = {
        "model_name": manifest.name, "model_version": manifest.version, "labels": ",".join(manifest.labels),
        "sha256": sha256_of(classifier.model_file), "runtime": classifier.runtime.name,
        "threads": str(settings.inference_threads), "loaded_at": now_iso(),
    }
    resources = ProcessResources(name=f"{socket.gethostname()}:{os.getpid()}", store=store,
                                 broker=connect(settings.redis_url), images=images, registry=registry,
                                 fair_share=fair_share, reconciler=reconciler, classifier=classifier,
                                 explainer=explainer, announcement=announcement)
    registry.announce(resources.name, announcement)
    log.info("model %s %s loaded from %s (%s, %d threads)", manifest.name, manifest.version,
             classifier.model_file, classifier.runtime.name, settings.inference_threads)
    return resources


OBJECT_STORE_PAUSE = 2.0
"""Seconds a task waits before going back to the queue when the object store holding its images does not answer."""

BUSY_GAP = 0.5
"""Seconds between two tasks of a model process beyond which the wait is an empty queue, not a gap between chunks
(only the shorter ones are measured: `between_tasks_seconds`)."""


class ClassifyRequest(Request):
    """A classify task's request, as the worker's parent process handles it: when the model process running it
    dies (killed, out of memory, stopped at the hard time limit), the parent, which saw it die, queues its jobs
    again before Celery hands the task back to the broker (task_reject_on_worker_lost), so that the task's next
    run takes them at once instead of waiting for their lease to end."""

    def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False) -> None:
        error = exc_info.exception
        if isinstance(error, ExceptionWithTraceback):  # how the pool hands over a child's error
            error = error.exc
        died = isinstance(error, (WorkerLostError, TimeLimitExceeded, SystemExit))
        if died and self.worker_pid:
            _release_dead(self.args[0], f"{socket.gethostname()}:{self.worker_pid}")
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


@cache
def _parent_store() -> JobStore:
    """The parent process's own access to the job store (it never loads a model process's resources)."""
    settings = get_settings()
    return JobStore(settings.redis_url, ttl=settings.job_ttl)


def _release_dead(job_ids: list[str], process: str) -> None:
    try:
        released = _parent_store().release_dead(job_ids, process=process)
    except Exception as error:  # Redis away: the jobs' lease ends them instead
        log.warning("model process %s died; its jobs could not be queued again (%s)", process, error)
        return
    log.warning("model process %s died under a task: %d of its jobs queued again", process, len(released))


class ClassifyTask(Task):
    """The classify task, holding its process's resources: loaded on first use, kept for the process's life."""

    Request = "worker.tasks:ClassifyRequest"

    _resources: ProcessResources | None = None
    last_finished: float | None = None
    """When this process's previous task ended (time.perf_counter())."""

    @property
    def resources(self) -> ProcessResources:
        return self.load()

    def load(self) -> ProcessResources:
        """The process's resources, loaded now if they are not yet."""
        # A prefork or solo process runs one task at a time, and worker_process_init runs before any: no lock.
        if self._resources is None:
            self._resources = load_resources(get_settings())
            threading.Thread(target=_heartbeat, args=(self._resources,), name="heartbeat", daemon=True).start()
            threading.Thread(target=_sweep, args=(self._resources, get_settings().sweep_interval), name="sweeper",
                             daemon=True).start()
        return self._resources

    def retire(self) -> None:
        """Leave the worker registry at once rather than when the announcement expires (if this process had joined)."""
        if self._resources is not None:
            self._resources.registry.retire(self._resources.name)


def _sweep(resources: ProcessResources, interval: float) -> None:
    """Take the reconciler's turn when it comes (service/reconciler.py): every process offers, one sweeps."""
    stopped = threading.Event()
    while not stopped.wait(interval / 2):
        try:
            resources.reconciler.sweep_if_due(resources.name)
        except Exception:  # Redis away, or a bug: the next turn tries again; a sweep never costs the worker
            log.warning("the reconciler's sweep failed", exc_info=True)


def _heartbeat(resources: ProcessResources) -> None:
    stopped = threading.Event()
    while not stopped.wait(WORKER_TTL / 3):
        try:
            resources.registry.announce(resources.name, resources.announcement)
        except Exception:  # Redis away: the announcement lapses, readiness says so, the next beat restores it
            log.warning("heartbeat failed: Redis does not answer")


@setup_logging.connect
def use_service_logging(**_: object) -> None:
    """Celery leaves logging to us when this signal has a receiver: the same format as the API's."""
    settings = get_settings()
    configure_logging(level=settings.log_level, json_lines=settings.log_format == "json")


@worker_process_init.connect
def load_before_first_task(**_: object) -> None:
    """Right after the fork; a pool without process-init signals (solo, threads) loads on the first task instead."""
    _classify_task().load()


@worker_process_shutdown.connect
def retire(**_: object) -> None:
    _classify_task().retire()


def _classify_task() -> ClassifyTask:
    return cast(ClassifyTask, celery_app.tasks[CLASSIFY_TASK])


@celery_app.task(name=CLASSIFY_TASK, base=ClassifyTask, bind=True)
def classify(self: ClassifyTask, job_ids: list[str], chunk: str | None = None, owner: str = "") -> None:
    """Classify a chunk of jobs; a bulk chunk (`chunk` named) then releases its owner's next (fair share). Between
    two forward passes, a chunk makes way for interactive tasks waiting: the rest of it queues again.

    Whatever happens, the run lets go of what it holds: the jobs it claimed are finished or given back, and the
    chunk's place in its owner's window goes to the next chunk; but a run that hands its task back to the broker
    (the job store went away) leaves the chunk to the task's next run.
    """
    resources = self.resources
    settings = get_settings()
    run = new_token()
    if self.last_finished is not None and (gap := time.perf_counter() - self.last_finished) < BUSY_GAP:
        observe(resources.store, "between_tasks_seconds", [gap])
    finish_chunk = chunk is not None
    try:
        try:
            left = process_jobs(job_ids, store=resources.store, images=resources.images,
                                classifier=resources.classifier, token=run, lease=lease_seconds(settings),
                                max_deliveries=settings.max_deliveries, worker=resources.name,
                                explainer=resources.explainer,
                                yield_between_passes=partial(_interactive_waiting, resources.broker))
            if left:
                # The rest of the chunk queues again behind the interactive work, still in its owner's window: the
                # run that finishes it releases the owner's next chunk. If this send fails, the chunk is in flight
                # with no message naming it, and the reconciler puts it back in its owner's turn.
                finish_chunk = False
                send_classify_task(left, app=celery_app, lane=Lane.BULK, chunk=chunk, owner=owner)
        except SoftTimeLimitExceeded:
            fail_held(job_ids, store=resources.store, token=run, error=problem(
                "job-timeout", "Job timeout", 504, f"the job ran longer than JOB_TIMEOUT ({settings.job_timeout} s)"))
    except (RedisConnectionError, RedisTimeoutError) as error:
        # The job store went away mid-task (a restart, a partition): hand the task back to the queue rather than
        # drop it; if Redis cannot take it back yet, it stays unacknowledged and is handed out again later.
        _give_back(resources.store, job_ids, run)
        finish_chunk = False
        raise Reject(f"the job store does not answer ({error})", requeue=True) from error
    except ObjectStoreUnavailable as error:
        # The images' store went away: the jobs are not at fault, and wait for it. After a pause, so that a store
        # that stays away is not asked again and again at once.
        _give_back(resources.store, job_ids, run)
        finish_chunk = False
        log.warning("the object store does not answer: the task goes back to the queue in %g s (%s)",
                    OBJECT_STORE_PAUSE, error)
        time.sleep(OBJECT_STORE_PAUSE)
        raise Reject(str(error), requeue=True) from error
    except Exception:
        # A failure of the service's own: the jobs go back to the queue, where the reconciler finds them without a
        # task and dispatches them again; MAX_DELIVERIES ends a job that fails every time.
        log.exception("the task failed: its jobs are given back")
        _give_back(resources.store, job_ids, run)
        raise
    finally:
        if finish_chunk:
            assert chunk is not None
            _finish_chunk(resources, owner, chunk, run)
    self.last_finished = time.perf_counter()


def _interactive_waiting(broker: Redis) -> bool:
    """Whether interactive tasks wait for a worker: a bulk task then stops after its forward pass, so that an urgent
    image waits for one pass, not for a whole chunk."""
    try:
        return tasks_waiting(broker, Lane.INTERACTIVE) > 0
    except RedisError:  # the job store's own calls meet the outage; a bulk task does not stop for it
        return False


def _give_back(store: JobStore, job_ids: list[str], run: str) -> None:
    """Queue again the jobs this run holds; if Redis does not answer, their lease ends them instead."""
    try:
        store.give_back(job_ids, holder=run)
    except Exception as error:
        log.warning("the jobs of a failed task could not be given back (%s): their lease will free them", error)


def _finish_chunk(resources: ProcessResources, owner: str, chunk: str, run: str) -> None:
    """Release the owner's next chunks, and send them. If that fails, the chunk stays in flight with no message
    naming it, and the reconciler puts it back in its owner's turn."""
    try:
        released = resources.fair_share.finish(owner, chunk, run=run, window=window_for(resources.registry.count()))
        send_bulk_chunks(released, owner=owner, fair_share=resources.fair_share, app=celery_app)
    except Exception as error:
        log.warning("chunk %s finished, but its owner's next chunks were not released (%s): the reconciler will",
                    chunk, error)
