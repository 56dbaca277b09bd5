"""Running a chunk of jobs: claim each, decode each, one batched forward pass, store each outcome.

A bad image fails its own job only; an error in the forward pass fails every job of the chunk, so no job
is left running.
"""

import logging
import time
from collections.abc import Sequence
from datetime import datetime

from celery.exceptions import SoftTimeLimitExceeded

from pneuradnet.classifier import Classifier, PreparedImage
from pneuradnet.errors import InvalidImageError
from pneuradnet.results import Prediction
from service.jobstore import Job, JobStore
from service.logs import job_event
from service.metrics import observe
from service.problems import problem

log = logging.getLogger(__name__)


def process_jobs(job_ids: Sequence[str], *, store: JobStore, classifier: Classifier, job_timeout: float,
                 max_deliveries: int, worker: str = "") -> None:
    deadline = time.time() + job_timeout
    claimed = [job for job_id in job_ids if (job := store.start(job_id, deadline=deadline, worker=worker))]
    prepared: list[tuple[Job, PreparedImage]] = []
    for job in claimed:
        job_event(log, "started", job.id, batch_id=job.batch_id, status="running", delivery=str(job.deliveries))
        if job.deliveries > max_deliveries:
            _fail(store, job, problem("worker-lost", "Worker lost", 500,
                                      f"the worker processing this image stopped {job.deliveries - 1} times; "
                                      "the image was not classified"))
            continue
        image = _prepare(store, classifier, job)
        if image is not None:
            prepared.append((job, image))
    observe(store, "queue_wait_seconds", [_seconds_since(job.created_at) for job in claimed])
    if not prepared:
        return
    started = time.perf_counter()
    try:
        predictions = classifier.predict([image for _, image in prepared])
    except SoftTimeLimitExceeded:
        raise  # JOB_TIMEOUT: the task fails the jobs with that reason
    except Exception as error:
        log.exception("inference failed for %d jobs", len(prepared))
        for job, _ in prepared:
            _fail(store, job, problem("inference-failed", "Inference failed", 500,
                                      f"the model could not classify this image ({type(error).__name__})"))
        return
    observe(store, "inference_seconds", [time.perf_counter() - started])
    observe(store, "batch_size", [len(prepared)])
    for (job, _), prediction in zip(prepared, predictions, strict=True):
        store.succeed(job.id, result_record(prediction))
        job_event(log, "succeeded", job.id, batch_id=job.batch_id, status="succeeded")


def fail_unfinished(job_ids: Sequence[str], *, store: JobStore, error: dict) -> None:
    """Fail every job of the chunk that has not finished, e.g. when the task ran out of time."""
    for job in store.get_jobs(job_ids):
        if not job.status.finished:
            _fail(store, job, error)


def _prepare(store: JobStore, classifier: Classifier, job: Job) -> PreparedImage | None:
    data = store.image(job.id)
    if data is None:
        _fail(store, job, problem("image-missing", "Image missing", 500,
                                  "the uploaded image is no longer stored (it expired before a worker took it)"))
        return None
    try:
        return classifier.prepare(job.filename, data)
    except InvalidImageError as error:
        _fail(store, job, problem("invalid-image", "Invalid image", 422, str(error)))
    except SoftTimeLimitExceeded:
        raise
    except Exception as error:  # a worker never dies from an image
        log.exception("job %s: unexpected error while decoding", job.id)
        _fail(store, job, problem("invalid-image", "Invalid image", 422,
                                  f"the image could not be decoded ({type(error).__name__})"))
    return None


def _seconds_since(timestamp: str) -> float:
    return max(0.0, time.time() - datetime.fromisoformat(timestamp).timestamp())


def _fail(store: JobStore, job: Job, error: dict) -> None:
    store.fail(job.id, error)
    job_event(log, "failed", job.id, batch_id=job.batch_id, status="failed", detail=error["detail"])


def result_record(prediction: Prediction) -> dict:
    """What a succeeded job carries as its `result`."""
    return {
        "labels": list(prediction.labels),
        "predictions": list(prediction.predictions),
        "predicted_class": prediction.predicted_class,
        "confidence": prediction.confidence,
        "model": {"name": prediction.model_name, "version": prediction.model_version},
        "runtime": prediction.runtime,
        "timings_ms": prediction.timings_ms,
        "source": prediction.source,
    }
