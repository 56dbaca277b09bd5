"""The callback delivery task: one signed POST of a finished batch's summary to the URL its submission named.

Each task makes at most one attempt (service/deliveries.py decides whether it may), then records the outcome; a
retry is a new task, sent with a countdown when it is due soon, otherwise by the reconciler when its time comes. A
worker killed mid-request leaves the attempt's lease to run out; the reconciler then sends a task that makes the
next attempt with the same delivery id (at least once; the receiver drops duplicates by X-Pneuradnet-Delivery).

The request: no proxy from the environment (the allow-list names where it goes), no redirect followed, short
time-outs, at most MAX_ANSWER_BYTES of the answer read; the URL is checked against WEBHOOK_ALLOWED_HOSTS again, so
a host taken off the list is not called for batches submitted before.
"""

import logging
import math
from dataclasses import dataclass
from functools import cache

import httpx
from celery.exceptions import SoftTimeLimitExceeded

from service.channels import Channel
from service.deliveries import Deliveries, Recorded
from service.notice import DISCLAIMER
from service.queue import DELIVER_TASK, VISIBILITY_MARGIN, send_delivery_task
from service.settings import Settings, get_settings
from service.webhooks import (
    CallbackRefused,
    CallbackState,
    Verdict,
    check_callback_url,
    payload,
    retry_wait,
    signed_request,
    verdict,
)
from worker.app import celery_app

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 4096
"""Most bytes of a receiver's answer read: its status is what counts."""

ATTEMPT_TIMEOUTS = 3
"""An attempt may take this many WEBHOOK_TIMEOUTs in all (connect, send, answer) before it is stopped."""

LEASE_MARGIN = 10.0
"""Seconds past an attempt's longest run before another task may take the delivery over (its worker is gone)."""

COUNTDOWN_LIMIT = VISIBILITY_MARGIN - 5
"""Longest retry wait, in seconds, left to a countdown on the broker; a task held longer than the broker's
visibility timeout would be handed out twice, so later retries are sent by the reconciler when they are due."""


@dataclass(frozen=True)
class Answer:
    status: int | None
    """The receiver's HTTP status; None without one."""
    error: str = ""
    """What went wrong without an answer (refused, timed out)."""


def attempt_seconds(settings: Settings) -> int:
    """The longest an attempt may run (the task's soft time limit)."""
    return math.ceil(ATTEMPT_TIMEOUTS * settings.webhook_timeout)


@cache
def deliveries() -> Deliveries:
    """This process's access to the deliveries, of every channel (a pool process runs one task at a time)."""
    return Deliveries(get_settings().redis_url)


def record_attempt(batch_id: str, attempt: int, outcome: Verdict, *, status: int | None = None, error: str = "",
                   channel: Channel = Channel.CALLBACK) -> Recorded | None:
    """Record how an attempt at a delivery ended, and send the task of its retry when it is due within
    COUNTDOWN_LIMIT (a later one is the reconciler's to send); None if a later attempt overtook it."""
    settings = get_settings()
    recorded = deliveries().record(batch_id, attempt, outcome, status=status, error=error,
                                   retry_wait=retry_wait(attempt), max_age=settings.webhook_max_age, channel=channel)
    if recorded is not None and recorded.state is CallbackState.PENDING:
        wait = retry_wait(attempt)
        if wait <= COUNTDOWN_LIMIT:
            send_delivery_task(batch_id, attempt, app=celery_app, countdown=wait, channel=channel)
    return recorded


_settings = get_settings()


@celery_app.task(name=DELIVER_TASK, soft_time_limit=attempt_seconds(_settings),
                 time_limit=attempt_seconds(_settings) + 5)
def deliver_callback(batch_id: str, attempts_seen: int) -> None:
    """Make the next attempt at a batch's callback, if `attempts_seen` is still the number made and no other attempt
    is under way; record what the receiver answered, and schedule the retry."""
    settings = get_settings()
    attempt = deliveries().claim(batch_id, attempts_seen=attempts_seen,
                                 lease=attempt_seconds(settings) + 5 + LEASE_MARGIN)
    if attempt is None:
        return  # another task has it, or it is over
    fields = attempt.fields
    delivery_id = fields["callback_delivery"]
    try:
        url = check_callback_url(fields["callback_url"], settings.webhook_host_patterns)
    except CallbackRefused as refused:
        record_attempt(batch_id, attempt.number, Verdict.GIVE_UP, error=f"not sent: {refused}")
        log.warning("callback of batch %s given up: %s", batch_id, refused)
        return
    body, headers = signed_request(payload(fields, batch_id=batch_id, notice=DISCLAIMER),
                                   secret=settings.webhook_secret, delivery_id=delivery_id)
    answer = post(url, body, headers, timeout=settings.webhook_timeout)
    outcome = verdict(answer.status)
    error = answer.error
    if outcome is Verdict.GIVE_UP:
        error = f"the receiver answered {answer.status}: not retried"
    recorded = record_attempt(batch_id, attempt.number, outcome, status=answer.status, error=error)
    log.info("callback %s of batch %s, attempt %d: %s -> %s", delivery_id, batch_id, attempt.number,
             answer.status or answer.error, recorded.state.value if recorded else "overtaken by a later attempt")


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Answer:
    """POST once; the status, or why there is none. Reads at most MAX_ANSWER_BYTES of the answer."""
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False) as client, \
                client.stream("POST", url, content=body, headers=headers) as response:
            _read_some(response)
            return Answer(response.status_code)
    except httpx.TimeoutException:
        return Answer(None, f"no answer within WEBHOOK_TIMEOUT ({timeout:g} s)")
    except SoftTimeLimitExceeded:
        return Answer(None, f"the attempt took longer than {ATTEMPT_TIMEOUTS} x WEBHOOK_TIMEOUT")
    except httpx.HTTPError as error:
        return Answer(None, f"{type(error).__name__}: {error}"[:300])


def _read_some(response: httpx.Response) -> None:
    """Read at most MAX_ANSWER_BYTES of the answer and drop them: the status has come, whatever the body does."""
    read = 0
    try:
        for chunk in response.iter_raw():
            read += len(chunk)
            if read >= MAX_ANSWER_BYTES:
                return
    except httpx.HTTPError:
        return
