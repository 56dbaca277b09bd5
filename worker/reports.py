"""The report delivery task: a finished study batch's structured report (and heatmap captures) sent to one
destination, by C-STORE (report_dicom, pynetdicom) or by STOW-RS (report_stow, httpx).

As a callback's: each task makes at most one attempt, claimed through service/deliveries.py, then records the
outcome; a retry is a new task (a countdown, or the reconciler when its time comes), until the destination
acknowledges or WEBHOOK_MAX_AGE has passed since the batch finished. Every attempt sends the same SOP instances
(their UIDs derive from the batch id), so a send repeated after a lost acknowledgement is stored once by the PACS.

What counts as acknowledged: every C-STORE answered success or warning; a STOW-RS answer 200, or 202 naming no
failed instance. Retried: no association or no answer, a C-STORE refused for lack of resources (0xA7xx), a 5xx.
Given up at once: any other C-STORE failure or a 4xx (sending the same objects again cannot help), and a batch
with nothing to report. pynetdicom's own log is kept to warnings: at debug it would print the datasets.
"""

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import httpx
from celery.exceptions import SoftTimeLimitExceeded
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import code_to_category

from pneuradnet.sr import ReportError, to_bytes
from service.channels import Channel, DicomDestination
from service.jobstore import JobStore
from service.queue import REPORT_TASK
from service.reports import report_objects
from service.settings import get_settings
from service.webhooks import Verdict
from worker.app import celery_app
from worker.webhooks import LEASE_MARGIN, attempt_seconds, deliveries, record_attempt

log = logging.getLogger(__name__)
logging.getLogger("pynetdicom").setLevel(logging.WARNING)

OUT_OF_RESOURCES = 0xA700
"""C-STORE failures 0xA7xx: the PACS is full for now, and a later attempt may succeed."""

MAX_FAILURE_TEXT = 300
"""Most characters of a destination's failure kept in the batch's delivery state."""


@dataclass(frozen=True)
class Sent:
    verdict: Verdict
    status: int | None = None
    """The HTTP status, or the first C-STORE status that was not success; None without an answer."""
    error: str = ""


@cache
def _store() -> JobStore:
    settings = get_settings()
    return JobStore(settings.redis_url, ttl=settings.job_ttl)


_settings = get_settings()


@celery_app.task(name=REPORT_TASK, soft_time_limit=attempt_seconds(_settings),
                 time_limit=attempt_seconds(_settings) + 5)
def deliver_report(batch_id: str, channel_name: str, attempts_seen: int) -> None:
    """Make the next attempt at a batch's report to one destination, if `attempts_seen` is still the number made
    and no other attempt is under way; record the destination's answer, and schedule the retry."""
    settings = get_settings()
    channel = Channel(channel_name)
    attempt = deliveries().claim(batch_id, attempts_seen=attempts_seen, channel=channel,
                                 lease=attempt_seconds(settings) + 5 + LEASE_MARGIN)
    if attempt is None:
        return  # another task has it, or it is over
    destination = attempt.fields[f"{channel}_to"]
    try:
        objects = report_objects(_store(), batch_id, with_captures=attempt.fields.get("explain") == "1")
    except ReportError as nothing:
        sent = Sent(Verdict.GIVE_UP, error=f"not sent: {nothing}")
    else:
        timeout = settings.webhook_timeout
        try:
            if channel is Channel.REPORT_DICOM:
                sent = c_store(objects, DicomDestination.parse(destination), calling=settings.dicom_ae_title,
                               timeout=timeout)
            else:
                sent = stow(objects, destination, timeout=timeout)
        except SoftTimeLimitExceeded:
            sent = Sent(Verdict.RETRY, error="the attempt took longer than 3 x WEBHOOK_TIMEOUT")
    recorded = record_attempt(batch_id, attempt.number, sent.verdict, status=sent.status, error=sent.error,
                              channel=channel)
    log.info("%s of batch %s, attempt %d: %s -> %s", channel.value, batch_id, attempt.number,
             sent.error or sent.verdict.value, recorded.state.value if recorded else "overtaken by a later attempt")


def c_store(objects: Sequence[Dataset], destination: DicomDestination, *, calling: str, timeout: float) -> Sent:
    """C-STORE every object over one association, in order, calling as `calling` (DICOM_AE_TITLE, the title the
    PACS knows the node by: Orthanc's DicomModalities); what the PACS answered."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    for sop_class in dict.fromkeys(str(dataset.SOPClassUID) for dataset in objects):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    association = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not association.is_established:
        why = "rejected" if association.is_rejected else "aborted" if association.is_aborted else "not answered"
        return Sent(Verdict.RETRY, error=f"the association with {destination} was {why}")
    try:
        for dataset in objects:
            answer = association.send_c_store(dataset)
            if "Status" not in answer:
                return Sent(Verdict.RETRY, error=f"{destination} did not answer a C-STORE")
            status = int(answer.Status)
            if code_to_category(status) in ("Success", "Warning"):
                continue
            comment = f" ({answer.ErrorComment})" if "ErrorComment" in answer else ""
            verdict = Verdict.RETRY if status & 0xFF00 == OUT_OF_RESOURCES else Verdict.GIVE_UP
            return Sent(verdict, status, f"{destination} refused the C-STORE: 0x{status:04X}{comment}"
                        [:MAX_FAILURE_TEXT])
    finally:
        association.release()
    return Sent(Verdict.DELIVERED, 0)


def stow(objects: Sequence[Dataset], url: str, *, timeout: float) -> Sent:
    """POST every object in one multipart/related request (PS3.18 Store Instances); what the server answered."""
    boundary = uuid.uuid4().hex
    parts = [b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), to_bytes(dataset))
             for dataset in objects]
    body = b"".join(parts) + b"--%s--\r\n" % boundary.encode()
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.TimeoutException:
        return Sent(Verdict.RETRY, error=f"no answer within WEBHOOK_TIMEOUT ({timeout:g} s)")
    except httpx.HTTPError as error:
        return Sent(Verdict.RETRY, error=f"{type(error).__name__}: {error}"[:MAX_FAILURE_TEXT])
    status = response.status_code
    if status >= 500:
        return Sent(Verdict.RETRY, status, f"the STOW-RS server answered {status}")
    failed = _failed_instances(response) if status in (200, 202, 409) else []
    if status in (200, 202) and not failed:
        return Sent(Verdict.DELIVERED, status)
    reasons = ", ".join(f"0x{reason:04X}" for reason in failed) or "none given"
    return Sent(Verdict.GIVE_UP, status, f"the STOW-RS server answered {status} (failure reasons: {reasons}): "
                                         "not retried")


def _failed_instances(response: httpx.Response) -> list[int]:
    """The FailureReason of each instance the Store Instances Response lists as failed (FailedSOPSequence)."""
    try:
        answer = json.loads(response.content or b"{}")
        failed = answer.get("00081198", {}).get("Value", [])
        return [int(item.get("00081197", {}).get("Value", [0])[0]) for item in failed]
    except (ValueError, AttributeError, TypeError, IndexError):
        return []
