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
from typing import cast

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pneuradnet.classifier import Classifier
from pneuradnet.explain import GradCam
from pneuradnet.manifest import sha256_of
from service.deliveries import first_attempt_sender
from service.fairshare import FairShare, window_for
from service.jobstore import JobStore, now_iso
from service.keys import WORKER_TTL
from service.logs import configure_logging
from service.metrics import observe
from service.problems import problem
from service.queue import CLASSIFY_TASK, send_bulk_chunks
from service.reconciler import Reconciler
from service.settings import Settings, get_settings
from service.workers import WorkerRegistry
from worker.app import celery_app
from worker.processing import LazyExplainer, fail_unfinished, process_jobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessResources:
    """What one model process loads once and every task it runs uses."""

    name: str
    """`host:pid`, this process's key in the worker registry and the `worker` of the jobs it runs."""
    store: JobStore
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
    store = JobStore(settings.redis_url, ttl=settings.job_ttl, on_callback_due=first_attempt_sender(celery_app))
    registry = WorkerRegistry(settings.redis_url)
    fair_share = FairShare(settings.redis_url, ttl=settings.job_ttl)
    reconciler = Reconciler(url=settings.redis_url, store=store, workers=registry, fair_share=fair_share,
                            celery=celery_app, max_batch=settings.max_batch, sweep_interval=settings.sweep_interval)
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
    resources = ProcessResources(name=f"{socket.gethostname()}:{os.getpid()}", store=store, registry=registry,
                                 fair_share=fair_share, reconciler=reconciler, classifier=classifier,
                                 explainer=explainer, announcement=announcement)
    registry.announce(resources.name, announcement)
    log.info("model %s %s loaded from %s (%s, %d threads)", manifest.name, manifest.version,
             classifier.model_file, classifier.runtime.name, settings.inference_threads)
    return resources


BUSY_GAP = 0.5
"""Seconds between two tasks of a model process beyond which the wait is an empty queue, not a gap between chunks
(only the shorter ones are measured: `between_tasks_seconds`)."""


class ClassifyTask(Task):
    """The classify task, holding its process's resources: loaded on first use, kept for the process's life."""

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
    """Classify a chunk of jobs; a bulk chunk (`chunk` named) then releases its owner's next (fair share)."""
    resources = self.resources
    settings = get_settings()
    if self.last_finished is not None and (gap := time.perf_counter() - self.last_finished) < BUSY_GAP:
        observe(resources.store, "between_tasks_seconds", [gap])
    try:
        resources.registry.hold(resources.name, job_ids)
        try:
            process_jobs(job_ids, store=resources.store, classifier=resources.classifier,
                         job_timeout=settings.job_timeout, max_deliveries=settings.max_deliveries,
                         worker=resources.name, explainer=resources.explainer)
        except SoftTimeLimitExceeded:
            fail_unfinished(job_ids, store=resources.store, error=problem(
                "job-timeout", "Job timeout", 504,
                f"the job ran longer than JOB_TIMEOUT ({settings.job_timeout} s)"))
        resources.registry.hold(resources.name, [])
    except (RedisConnectionError, RedisTimeoutError) as error:
        # The job store went away mid-task (a restart, a partition): hand the task back to the queue rather than
        # drop it; if Redis cannot take it back yet, it stays unacknowledged and is handed out again later.
        raise Reject(f"the job store does not answer ({error})", requeue=True) from error
    if chunk is not None:
        # Sent before this task is acknowledged: a worker that dies in between runs it again, and the release
        # then answers the same chunks (sending one twice is harmless, losing one is not).
        released = resources.fair_share.finish(owner, chunk, window=window_for(resources.registry.count()))
        send_bulk_chunks(released, owner=owner, app=celery_app)
    self.last_finished = time.perf_counter()
