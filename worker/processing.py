"""Running a chunk of jobs: claim each, then forward passes of up to max_batch images, each pass's images read
and decoded while the previous pass runs, and each pass's outcomes stored as soon as it is done.

A bad image fails its own job only; an error in a forward pass fails every job of that pass, so no job is
left running. A job submitted with explain then gets a Grad-CAM heatmap of its predicted class, made by an
explainer loaded on the first such job (LazyExplainer); its probabilities still come from the batched pass, and
an explanation that fails leaves the job succeeded with the reason in its result.
"""

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pneuradnet.classifier import Classifier, PreparedImage
from pneuradnet.errors import InvalidImageError, PneuradnetError
from pneuradnet.explain import GradCam, overlay_png
from pneuradnet.results import Prediction
from service.images import JobImages
from service.imagestore import ObjectStoreUnavailable, ObjectUnreadable
from service.jobstore import Job, JobStore
from service.logs import job_event
from service.metrics import count_failures, count_finished, observe
from service.problems import problem

log = logging.getLogger(__name__)

Explainer = Callable[[], GradCam]
"""Gives the process's Grad-CAM explainer, loading it on the first call (see LazyExplainer)."""


class LazyExplainer:
    """The Grad-CAM explainer, loaded when the first job with explain arrives: a process that never explains never
    imports TensorFlow. A load that fails is not retried for every job: its error is kept and raised again."""

    def __init__(self, load: Callable[[], GradCam]) -> None:
        self._load = load
        self._explainer: GradCam | None = None
        self._error: Exception | None = None

    def __call__(self) -> GradCam:
        # A pool process runs one task at a time, and only tasks call this: no lock needed.
        if self._explainer is not None:
            return self._explainer
        if self._error is not None:
            raise self._error
        log.info("first job with explain: loading TensorFlow and the Keras model for Grad-CAM")
        started = time.perf_counter()
        try:
            self._explainer = self._load()
        except SoftTimeLimitExceeded:
            raise  # the task's time ran out, not the explainer's fault: the next explained job tries again
        except Exception as error:
            self._error = error
            log.error("the Grad-CAM explainer cannot be loaded, jobs with explain get no heatmap: %s", error)
            raise
        log.info("Grad-CAM explainer loaded in %.1f s (layer %s)", time.perf_counter() - started,
                 "/".join(self._explainer.layer_path))
        return self._explainer


def process_jobs(job_ids: Sequence[str], *, store: JobStore, images: JobImages, classifier: Classifier, token: str,
                 lease: float, max_deliveries: int, worker: str = "", explainer: Explainer | None = None,
                 yield_between_passes: Callable[[], bool] = lambda: False) -> list[str]:
    """Claim the jobs for the run `token` (a lease of `lease` seconds), classify them in forward passes of the
    classifier's max_batch, and store each pass's outcomes as soon as it is done. Only what this run holds is
    stored; once a forward pass is done, its results are stored however long Redis takes to answer again (within
    the task's time limit), so that a short outage costs no work twice. The images the service wrote for the jobs
    this run finished are deleted then.

    Each pass's images are read and decoded while the previous pass runs (read-ahead): the model waits for the
    bytes of the first pass alone. Between two passes, `yield_between_passes` may stop the run (more urgent work
    waits): the jobs of the passes not run are given back, and returned, for the caller to send on; else []."""
    started = time.perf_counter()
    claimed = store.claim(job_ids, token=token, lease=lease, worker=worker)
    finished: list[Job] = []
    runnable: list[Job] = []
    for job in claimed:
        job_event(log, "started", job.id, batch_id=job.batch_id, status="running", delivery=str(job.deliveries))
        if job.deliveries > max_deliveries:
            finished += _fail(store, job, token, problem(
                "worker-lost", "Worker lost", 500, f"the worker processing this image stopped {job.deliveries - 1} "
                "times; the image was not classified"))
        else:
            runnable.append(job)
    observe(store, "queue_wait_seconds", [job.queue_wait for job in claimed if job.queue_wait is not None])
    passes = [runnable[start:start + classifier.max_batch] for start in range(0, len(runnable), classifier.max_batch)]
    # One thread reads ahead; it only reads and decodes, and job states are written here, by the task's thread.
    ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead")
    try:
        # One pass at most is read ahead of the model: a worker holds one pass's image bytes (those being decoded;
        # a pass's are dropped once it is prepared), whatever its task size.
        upcoming = [ahead.submit(_prepare, jobs, images, classifier) for jobs in passes[:1]]
        waiting_since = started
        for index in range(len(passes)):
            if index and yield_between_passes():
                return store.give_back([job.id for jobs in passes[index:] for job in jobs], holder=token)
            outcomes = upcoming.pop().result()  # ObjectStoreUnavailable: the task gives its jobs back
            upcoming += [ahead.submit(_prepare, jobs, images, classifier) for jobs in passes[index + 1:index + 2]]
            prepared: list[tuple[Job, PreparedImage]] = []
            for job, outcome in outcomes:
                if isinstance(outcome, PreparedImage):
                    prepared.append((job, outcome))
                else:
                    finished += _fail(store, job, token, outcome)
            if prepared:
                finished += _classify(prepared, store=store, classifier=classifier, token=token, explainer=explainer,
                                      waiting_since=waiting_since)
            waiting_since = time.perf_counter()
    finally:
        # A pass read ahead for a task that stopped (its time ran out, a store went away) is not waited for.
        ahead.shutdown(wait=False, cancel_futures=True)
        _discard(images, finished)
        count_finished(store, finished)
    return []


def _prepare(jobs: Sequence[Job], images: JobImages, classifier: Classifier) -> list[tuple[Job, PreparedImage | dict]]:
    """Read and decode the images of one forward pass: each job's prepared image, or the problem that fails it.
    Raises ObjectStoreUnavailable if the store holding them does not answer (the jobs are not at fault)."""
    outcomes: list[tuple[Job, PreparedImage | dict]] = []
    readable: list[tuple[Job, bytes | Callable[[], bytes]]] = []
    for job, data in zip(jobs, images.read(jobs), strict=True):
        if data is None:
            outcomes.append((job, problem("image-missing", "Image missing", 500, "the uploaded image is no longer "
                                          "stored (it expired before a worker took it)")))
        else:
            readable.append((job, data))
    # Each image is decoded as soon as its bytes are here (an object read from the bucket may still be on its way).
    # Explained jobs keep their decoded image, for the heatmap to be drawn over.
    decoded = classifier.prepare_each([(job.filename, data) for job, data in readable],
                                      keep_decoded=[job.explain for job, _ in readable])
    unavailable = next((outcome for outcome in decoded if isinstance(outcome, ObjectStoreUnavailable)), None)
    if unavailable is not None:
        raise unavailable
    for (job, _), outcome in zip(readable, decoded, strict=True):
        if isinstance(outcome, PreparedImage):
            outcomes.append((job, outcome))
        elif isinstance(outcome, ObjectUnreadable):
            outcomes.append((job, problem("image-unreadable", "Image unreadable", 422, str(outcome))))
        else:
            outcomes.append((job, _decoding_problem(job, outcome)))
    return outcomes


def _classify(prepared: list[tuple[Job, PreparedImage]], *, store: JobStore, classifier: Classifier, token: str,
              explainer: Explainer | None, waiting_since: float) -> list[Job]:
    """One forward pass for the prepared images, and its outcomes stored: the jobs this run finished."""
    started = time.perf_counter()
    observe(store, "preparation_seconds", [started - waiting_since])
    try:
        predictions = classifier.predict([image for _, image in prepared])
    except SoftTimeLimitExceeded:
        raise  # JOB_TIMEOUT: the task fails the jobs with that reason
    except Exception as error:
        log.exception("inference failed for %d jobs", len(prepared))
        failure = problem("inference-failed", "Inference failed", 500,
                          f"the model could not classify this image ({type(error).__name__})")
        return [done for job, _ in prepared for done in _patiently(partial(_fail, store, job, token, failure))]
    log.info("forward pass of %d images", len(prepared),
             extra={"event": "forward-pass", "job_ids": [job.id for job, _ in prepared]})
    observe(store, "inference_seconds", [time.perf_counter() - started])
    observe(store, "batch_size", [len(prepared)])
    outcomes = list(zip(prepared, predictions, strict=True))
    # Jobs without explain first, in one round trip: their results do not wait for the heatmaps of the others.
    plain = [(job, prediction.to_dict()) for (job, _), prediction in outcomes if not job.explain]
    finished = _patiently(partial(_succeed, store, plain, token))
    for (job, image), prediction in outcomes:
        if job.explain:
            explained = [(job, prediction.to_dict() | _explain(store, job, image, prediction, explainer))]
            finished += _patiently(partial(_succeed, store, explained, token))
    return finished


def _discard(images: JobImages, finished: list[Job]) -> None:
    try:
        images.discard(finished)
    except Exception as error:  # the reconciler deletes what is due and still there
        log.warning("the images of %d finished jobs were not deleted (%s): the reconciler will", len(finished),
                    error)


STORE_RETRY_WAIT = 0.5
"""Seconds between tries at storing a forward pass's outcomes while Redis does not answer."""


def _patiently(store_outcomes: Callable[[], list[Job]]) -> list[Job]:
    """Store what a forward pass found, trying again until Redis answers: the work is done and must not be lost to a
    restart or a partition. The task's time limit ends the wait (its jobs are then failed, or left to the lease)."""
    while True:
        try:
            return store_outcomes()
        except (RedisConnectionError, RedisTimeoutError) as error:
            log.warning("storing results failed, trying again in %g s: %s", STORE_RETRY_WAIT, error)
            time.sleep(STORE_RETRY_WAIT)


def _succeed(store: JobStore, results: list[tuple[Job, dict]], token: str) -> list[Job]:
    """Store the results; the jobs that succeeded by it (those this run still held)."""
    if not results:
        return []
    succeeded = set(store.succeed_many({job.id: result for job, result in results}, holder=token))
    for job, _ in results:
        if job.id in succeeded:
            job_event(log, "succeeded", job.id, batch_id=job.batch_id, status="succeeded")
    return [job for job, _ in results if job.id in succeeded]


def fail_held(job_ids: Sequence[str], *, store: JobStore, token: str, error: dict) -> None:
    """Fail every job of the chunk that the run `token` holds and has not finished, e.g. when its time ran out."""
    for job in store.get_jobs(job_ids):
        if job.token == token and not job.status.finished:
            _fail(store, job, token, error)


def _decoding_problem(job: Job, error: Exception) -> dict:
    if isinstance(error, InvalidImageError):
        return problem("invalid-image", "Invalid image", 422, str(error))
    # A worker never dies from an image: an unexpected decoder error fails this job only.
    log.error("job %s: unexpected error while decoding", job.id, exc_info=error)
    return problem("invalid-image", "Invalid image", 422, f"the image could not be decoded ({type(error).__name__})")


def _explain(store: JobStore, job: Job, image: PreparedImage, prediction: Prediction,
             explainer: Explainer | None) -> dict:
    """The Grad-CAM heatmap of the predicted class over the uploaded image, stored while the image bytes are
    still here (they go when the job finishes); what the result says about it."""
    if explainer is None:
        return {"heatmap": False, "explanation_error": "this worker does not compute explanations"}
    started = time.perf_counter()
    try:
        heatmap = explainer().heatmap(image.pixels, prediction.labels.index(prediction.predicted_class))
        assert image.decoded is not None, "an explained job's image is kept decoded (prepare_each keep_decoded)"
        png = overlay_png(image.decoded, heatmap)
    except SoftTimeLimitExceeded:
        raise
    except (PneuradnetError, ImportError) as error:  # the model cannot be explained: the message says why
        return {"heatmap": False, "explanation_error": str(error)}
    except Exception as error:  # an explanation never costs a job its prediction
        log.exception("job %s: Grad-CAM failed", job.id)
        return {"heatmap": False, "explanation_error": f"the heatmap could not be made ({type(error).__name__})"}
    if not store.save_heatmap(job.id, png):
        return {"heatmap": False, "explanation_error": "the job expired before its heatmap was stored"}
    timings = {**prediction.timings_ms, "explain": round((time.perf_counter() - started) * 1000.0, 3)}
    return {"heatmap": True, "timings_ms": timings}


def _fail(store: JobStore, job: Job, token: str, error: dict) -> list[Job]:
    """Fail the job if this run holds it: [the job] if it failed by it, else []."""
    if not store.fail(job.id, error, holder=token):
        return []
    count_failures(store, [error])
    job_event(log, "failed", job.id, batch_id=job.batch_id, status="failed", detail=error["detail"])
    return [job]
