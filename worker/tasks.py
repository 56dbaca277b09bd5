"""Celery glue: each pool process loads the model once, right after the fork, and runs chunks of jobs.

The prefork pool (not solo) is the choice: the parent stays small and never imports TensorFlow, a child
killed by a bad input or by JOB_TIMEOUT is replaced while its task is redelivered (reject_on_worker_lost),
and WORKER_CONCURRENCY children scale a worker across cores.
"""

import logging

from celery.signals import worker_process_init

from pneuradnet.classifier import Classifier
from service.jobstore import JobStore
from service.settings import get_settings
from worker.app import CLASSIFY_TASK, celery_app
from worker.processing import process_jobs

log = logging.getLogger(__name__)

_classifier: Classifier | None = None
_store: JobStore | None = None


@worker_process_init.connect
def load_model(**_: object) -> None:
    global _classifier, _store
    settings = get_settings()
    _store = JobStore(settings.redis_url, ttl=settings.job_ttl)
    _classifier = Classifier.load(
        settings.model_manifest,
        model_path=settings.model_path,
        runtime=settings.inference_runtime,
        threads=settings.inference_threads,
        max_batch=settings.max_batch,
    )
    _classifier.warm_up()
    log.info("model %s %s loaded from %s (%s, %d threads)", _classifier.manifest.name,
             _classifier.manifest.version, _classifier.model_file, _classifier.runtime.name,
             settings.inference_threads)


@celery_app.task(name=CLASSIFY_TASK)
def classify(job_ids: list[str]) -> None:
    if _classifier is None:  # a pool without process-init signals (solo, threads) loads on first use
        load_model()
    settings = get_settings()
    process_jobs(job_ids, store=_store, classifier=_classifier, job_timeout=settings.job_timeout,
                 max_deliveries=settings.max_deliveries)
