"""Celery glue: each pool process loads the model once, right after the fork, and runs chunks of jobs.

The prefork pool (not solo) is the choice: the parent stays small and never imports TensorFlow, a child
killed by a bad input is replaced while its task is redelivered (reject_on_worker_lost), the hard time limit
can stop a stuck child, and WORKER_CONCURRENCY children scale a worker across cores.

Explanations (jobs submitted with explain) need TensorFlow's gradients whatever the serving runtime: each pool
process loads its Grad-CAM explainer when its first such job arrives, never before.
"""

import logging
import os
import socket
import threading

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown

from pneuradnet.classifier import Classifier
from pneuradnet.explain import GradCam
from pneuradnet.manifest import sha256_of
from service.jobstore import WORKER_TTL, JobStore, now_iso
from service.logs import configure_logging
from service.problems import problem
from service.queue import CLASSIFY_TASK
from service.settings import get_settings
from worker.app import celery_app
from worker.processing import LazyExplainer, fail_unfinished, process_jobs

log = logging.getLogger(__name__)

_classifier: Classifier | None = None
_explainer: LazyExplainer | None = None
_store: JobStore | None = None
_name = ""


@setup_logging.connect
def use_service_logging(**_: object) -> None:
    """Celery leaves logging to us when this signal has a receiver: the same format as the API's."""
    settings = get_settings()
    configure_logging(level=settings.log_level, json_lines=settings.log_format == "json")


@worker_process_init.connect
def load_model(**_: object) -> None:
    global _classifier, _explainer, _store, _name
    settings = get_settings()
    _name = f"{socket.gethostname()}:{os.getpid()}"
    _store = JobStore(settings.redis_url, ttl=settings.job_ttl)
    _classifier = Classifier.load(
        settings.model_manifest,
        model_path=settings.model_path,
        runtime=settings.inference_runtime,
        threads=settings.inference_threads,
        max_batch=settings.max_batch,
        cache_dir=settings.model_cache_dir,
    )
    _classifier.warm_up()
    classifier = _classifier
    _explainer = LazyExplainer(lambda: GradCam(classifier.model_file, classifier.manifest,
                                               threads=settings.inference_threads))
    manifest = _classifier.manifest
    announcement = {
        "model_name": manifest.name, "model_version": manifest.version, "labels": ",".join(manifest.labels),
        "sha256": sha256_of(_classifier.model_file), "runtime": _classifier.runtime.name,
        "threads": str(settings.inference_threads), "loaded_at": now_iso(),
    }
    _store.announce_worker(_name, announcement)
    threading.Thread(target=_heartbeat, args=(announcement,), name="heartbeat", daemon=True).start()
    log.info("model %s %s loaded from %s (%s, %d threads)", manifest.name, manifest.version,
             _classifier.model_file, _classifier.runtime.name, settings.inference_threads)


def _heartbeat(announcement: dict[str, str]) -> None:
    stopped = threading.Event()
    while not stopped.wait(WORKER_TTL / 3):
        try:
            _store.announce_worker(_name, announcement)
        except Exception:  # Redis away: the announcement lapses, readiness says so, the next beat restores it
            log.warning("heartbeat failed: Redis does not answer")


@worker_process_shutdown.connect
def retire(**_: object) -> None:
    if _store is not None:
        _store.retire_worker(_name)


@celery_app.task(name=CLASSIFY_TASK)
def classify(job_ids: list[str]) -> None:
    if _classifier is None:  # a pool without process-init signals (solo, threads) loads on first use
        load_model()
    settings = get_settings()
    try:
        process_jobs(job_ids, store=_store, classifier=_classifier, job_timeout=settings.job_timeout,
                     max_deliveries=settings.max_deliveries, worker=_name, explainer=_explainer)
    except SoftTimeLimitExceeded:
        fail_unfinished(job_ids, store=_store, error=problem(
            "job-timeout", "Job timeout", 504, f"the job ran longer than JOB_TIMEOUT ({settings.job_timeout} s)"))
