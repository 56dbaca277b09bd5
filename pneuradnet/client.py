"""A Python client of the PNEURADNET service: submit images, wait for their jobs, read whole batches.

The one module of the library that speaks HTTP. It knows the service only by its HTTP API (it imports nothing
of api/, service/ or worker/), so it runs wherever httpx does.

Retries: an answer 429 (queue full), 503 (job store down) or 409 idempotency-in-progress (the same submission is
still being admitted) is retried after its `Retry-After`, and a
connection failure after a growing pause, at most `max_attempts` times and `max_retry_wait` seconds of
pauses per request; a pause that would not fit in what is left of that budget is not started, so the last
answer's error is raised at once. A POST whose request may have reached the service (the connection broke
after it was sent) is retried only when it carries an Idempotency-Key, so a retry never submits twice.
Until the service has answered once, a connection that cannot be made is not retried: a wrong address or a
service that is not running is said at once, not after half a minute of pauses; once it has answered, a
connection that fails (a restart, a dropped link) is retried as above.
"""

import io
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from os import PathLike
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from pneuradnet import __version__
from pneuradnet.errors import PneuradnetError
from pneuradnet.webhooks import verify_webhook as verify_webhook  # re-exported: a receiver's one import

DEFAULT_TIMEOUT = 60.0
"""Seconds one HTTP request may take to send or answer; a long poll is given its wait on top."""

CONNECT_TIMEOUT = 10.0
"""Most seconds to open a connection (or the request's timeout, if shorter): a service that is up accepts at once."""

LONG_POLL = 30.0
"""Seconds asked of `GET /jobs/{id}?wait=`: the longest the API holds a request."""

MAX_ATTEMPTS = 6
"""Tries of one request, the first included, when the service is busy, down or unreachable."""

MAX_RETRY_WAIT = 300.0
"""Most seconds one request spends pausing between its tries, in all."""

FIRST_BACKOFF = 1.0
"""Pause before the first retry when there is no Retry-After (a connection failure); doubled each time."""

IN_PROGRESS = "idempotency-in-progress"
"""The 409 a repeat gets while its first request is still being admitted: retried after its Retry-After."""

RETRIED_STATUSES = frozenset({429, 503})
"""Answers that mean "not now": the queue is full, or the job store does not answer."""

FINISHED = frozenset({"succeeded", "failed", "canceled"})
"""Job states that never change again (the service's JobStatus.finished)."""

PAGE_SIZE = 1000
"""Jobs asked per page of `GET /batches/{id}`: the API's maximum."""

PROBLEM_MEDIA_TYPE = "application/problem+json"

USER_AGENT = f"pneuradnet-client/{__version__}"

Item = str | PathLike[str] | tuple[str, bytes]
"""What `submit` uploads: an image file's path, or a (name, bytes) pair."""


class ServiceError(PneuradnetError):
    """The service answered a 4xx or 5xx, or could not be reached; `problem` is its RFC 9457 object, if any."""

    def __init__(self, status: int | None, detail: str, problem: dict[str, Any] | None = None,
                 retry_after: float | None = None) -> None:
        self.status = status
        """The HTTP status; None when no answer came (see ServiceUnreachableError)."""
        self.detail = detail
        self.problem = problem or {}
        self.retry_after = retry_after
        """Seconds the service asked to wait before trying again, when it said so."""
        kind = f" ({self.kind})" if self.kind else ""
        super().__init__(f"the service answered {status}{kind}: {detail}" if status else detail)

    @property
    def kind(self) -> str:
        """The problem's type without its URN prefix, e.g. `job-not-found`; empty if the answer had none."""
        return str(self.problem.get("type", "")).rsplit(":", 1)[-1]


class ServiceUnreachableError(ServiceError):
    """No answer at all: the connection failed (after the retries), or the request timed out."""


class WaitTimeoutError(PneuradnetError, TimeoutError):
    """`wait` ran out of time before every job finished."""


@dataclass(frozen=True)
class Submission:
    """A batch just accepted: its id, and its jobs (queued) in the order of the uploads."""

    batch_id: str
    jobs: list[dict[str, Any]]


class Client:
    """A client of one service at `api_url` (e.g. `http://127.0.0.1:8000`); use it as a context manager."""

    def __init__(self, api_url: str, *, key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_attempts: int = MAX_ATTEMPTS, max_retry_wait: float = MAX_RETRY_WAIT,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if max_retry_wait < 0:
            raise ValueError(f"max_retry_wait must not be negative, got {max_retry_wait}")
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_retry_wait = max_retry_wait
        self._sleep = sleep  # how pauses are taken: time.sleep, or a test's recorder
        self._answered = False  # the service has answered once: from then on, a failed connection is retried
        self._http = httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- the API -----------------------------------------------------------------------------------------------

    def submit(self, items: Iterable[Item], *, idempotency_key: str | None = None,
               explain: bool = False) -> Submission:
        """Upload images (paths or (name, bytes) pairs; ZIP archives are unpacked by the service) as one batch.

        With an idempotency key, submitting the same files again returns the batch first created instead of a
        new one, so a submission whose answer was lost can be repeated safely. With `explain`, each succeeded
        job also gets a Grad-CAM heatmap (see `heatmap`).
        """
        files = [("files", _named_file(item)) for item in items]
        if not files:
            raise ValueError("nothing to submit: give at least one image")
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        params = {"explain": "true"} if explain else {}
        body = self._request("POST", "/jobs", files=files, headers=headers, params=params,
                             resendable=idempotency_key is not None).json()
        return Submission(batch_id=body["batch_id"], jobs=body["jobs"])

    def submit_references(self, *, images: Sequence[str] | None = None, prefix: str | None = None,
                          idempotency_key: str | None = None, explain: bool = False) -> Submission:
        """Submit images already in a bucket the service may read (its IMAGE_SOURCES), as one batch, without
        uploading them: `images`, s3://bucket/key locations, or `prefix`, every object under an s3:// folder."""
        if (images is None) == (prefix is None):
            raise ValueError("give either images or prefix")
        body: dict[str, Any] = {"images": list(images)} if images is not None else {"prefix": prefix}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        params = {"explain": "true"} if explain else {}
        answer = self._request("POST", "/jobs", json=body, headers=headers, params=params,
                               resendable=idempotency_key is not None).json()
        return Submission(batch_id=answer["batch_id"], jobs=answer["jobs"])

    def get(self, job_id: str, *, wait: float = 0) -> dict[str, Any]:
        """The job's record; with `wait` (at most LONG_POLL seconds), as soon as it finishes within that time."""
        params = {"wait": f"{wait:g}"} if wait else {}
        job: dict[str, Any] = self._request("GET", f"/jobs/{job_id}", params=params,
                                            read_timeout=self.timeout + wait).json()
        return job

    def heatmap(self, job_id: str) -> bytes:
        """The PNG heatmap of a succeeded job submitted with explain; ServiceError 404 if it has none."""
        return self._request("GET", f"/jobs/{job_id}/heatmap.png").content

    def finished(self, job_ids: Iterable[str], *, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Each job once it has finished, in the order given, long-polling; WaitTimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for job_id in job_ids:
            while True:
                remaining = LONG_POLL if deadline is None else deadline - time.monotonic()
                job = self.get(job_id, wait=max(0.0, min(LONG_POLL, remaining)))
                if job["status"] in FINISHED:
                    yield job
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeoutError(f"job {job_id} is still {job['status']} after {timeout:g} s")

    def wait(self, job_ids: Iterable[str], *, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every job once finished, in the order given; WaitTimeoutError if that takes over `timeout` seconds."""
        return list(self.finished(job_ids, timeout=timeout))

    def models(self) -> list[dict[str, Any]]:
        """The models the live workers serve: name, version, sha256, labels (in output order), runtime, workers."""
        models: list[dict[str, Any]] = self._request("GET", "/models").json()["models"]
        return models

    def batch(self, batch_id: str, *, page_size: int = PAGE_SIZE) -> list[dict[str, Any]]:
        """Every job of the batch, in upload order, read page by page."""
        jobs: list[dict[str, Any]] = []
        params: dict[str, str | int] = {"page_size": page_size}
        while True:
            page = self._request("GET", f"/batches/{batch_id}", params=params).json()
            jobs += page["jobs"]
            if page["next_page_token"] is None:
                return jobs
            params["page_token"] = page["next_page_token"]

    # --- one request, retried ----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, resendable: bool = True, read_timeout: float | None = None,
                 **kwargs: Any) -> httpx.Response:
        """The answer to one request, retried as the module's docstring says; ServiceError for any 4xx/5xx.

        `resendable`: the request may be repeated even if it may have reached the service (GETs, and POSTs
        with an Idempotency-Key); otherwise only a request that surely was not sent (connect failed) is.
        """
        timeout = httpx.Timeout(self.timeout, read=read_timeout or self.timeout,
                                connect=min(self.timeout, CONNECT_TIMEOUT))
        waited = 0.0
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self._http.request(method, path, timeout=timeout, **kwargs)
            except httpx.TransportError as error:
                not_connected = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
                if not_connected and not self._answered:
                    raise ServiceUnreachableError(
                        None, f"cannot connect to {self._http.base_url}: {_describe(error)}; "
                              "is the service running at this address?") from error
                failure: ServiceError = ServiceUnreachableError(
                    None, f"no answer from {self._http.base_url}{path}: {_describe(error)}")
                if not (resendable or not_connected):
                    raise failure from error
                pause = FIRST_BACKOFF * 2 ** (attempt - 1)
            else:
                self._answered = True
                if response.is_success:
                    return response
                failure = _service_error(response)
                if response.status_code not in RETRIED_STATUSES and failure.kind != IN_PROGRESS:
                    raise failure
                pause = failure.retry_after if failure.retry_after is not None else FIRST_BACKOFF * 2 ** (attempt - 1)
            if attempt == self.max_attempts or waited + pause > self.max_retry_wait:
                raise failure
            self._sleep(pause)
            waited += pause
        raise AssertionError("unreachable: the last attempt returns or raises")


def _named_file(item: Item) -> tuple[str, BinaryIO]:
    """The item's name and its bytes in a file, for httpx to send from. httpx sends a file in 64 KiB writes, but a
    bytes value in one write that copies what is left after each send of the socket: a 109 MB archive took 0.8 s
    to send over loopback instead of 0.2 s. (Files are read, not left open: a request may hold 1000 of them.)"""
    if isinstance(item, tuple):
        name, data = item
        return name, io.BytesIO(data)
    path = Path(item)
    return path.name, io.BytesIO(path.read_bytes())


def _service_error(response: httpx.Response) -> ServiceError:
    retry_after = _retry_after(response.headers.get("retry-after"))
    problem: dict[str, Any] = {}
    if response.headers.get("content-type", "").startswith((PROBLEM_MEDIA_TYPE, "application/json")):
        try:
            body = response.json()
        except ValueError:
            body = None
        problem = body if isinstance(body, dict) else {}
    detail = problem.get("detail") or response.text.strip()[:200] or response.reason_phrase
    return ServiceError(response.status_code, str(detail), problem, retry_after)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds, or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _describe(error: httpx.TransportError) -> str:
    return str(error) or type(error).__name__
