"""Report deliveries on a real Redis, no worker: a study batch's reports become due once per destination when every
job has finished and the admission is closed, whichever comes last; a batch with no image classified skips them,
saying why; their attempts are claimed and recorded per channel, apart from the callback's; the reconciler resends
each channel. (tests/worker/test_reports.py delivers to a real PACS.)"""

import base64
import json
from collections.abc import Iterator

import pytest
from redis import Redis

from service.channels import Channel, DicomDestination, Reports
from service.deliveries import Deliveries
from service.jobstore import Batch, JobStore, Upload
from service.keys import WEBHOOKS_DUE, deliveries_due_key
from service.settings import Settings
from service.webhooks import CallbackState, Verdict
from tests.live_service import UNCONSUMED_REDIS_URL, empty_database
from tests.service.test_deliveries import sweep_for_deliveries

URL = UNCONSUMED_REDIS_URL
HEADER = b"DICM-study-header"  # what the store keeps is opaque bytes to it
REPORTS = Reports(study_header=HEADER, dicom_to="ORTHANC@127.0.0.1:4242", stow_url="http://127.0.0.1:8042/studies")


@pytest.fixture
def redis() -> Iterator[Redis]:
    with empty_database(URL) as client:
        yield client


@pytest.fixture
def due() -> list[tuple[str, Channel]]:
    return []


@pytest.fixture
def store(redis: Redis, due: list[tuple[str, Channel]]) -> Iterator[JobStore]:
    job_store = JobStore(URL, ttl=600, on_delivery_due=lambda batch_id, channel: due.append((batch_id, channel)))
    yield job_store
    job_store.close()


def opened(store: JobStore, count: int, reports: Reports | None = REPORTS) -> tuple[Batch, list[str]]:
    batch, _ = store.open_batch(total=count, reports=reports)
    jobs = store.add_jobs(batch, [Upload(f"{n}.dcm", b"dcm") for n in range(count)], stored_before=0)
    return batch, [job.id for job in jobs]


def succeed(store: JobStore, job_ids: list[str]) -> None:
    store.claim(job_ids, token="run-1", lease=60)
    store.succeed_many({job_id: {"predicted_class": "NORMAL"} for job_id in job_ids}, holder="run-1")


def test_reports_are_due_once_the_last_job_finishes_after_the_admission_closed(store, redis, due):
    batch, job_ids = opened(store, 2)
    store.close_admission(batch.id)
    assert store.study_header(batch.id) == HEADER
    succeed(store, job_ids[:1])
    assert due == []

    succeed(store, job_ids[1:])

    assert due == [(batch.id, Channel.REPORT_DICOM), (batch.id, Channel.REPORT_STOW)]
    for channel in (Channel.REPORT_DICOM, Channel.REPORT_STOW):
        assert redis.zrange(deliveries_due_key(channel), 0, -1) == [batch.id]
    assert redis.zcard(WEBHOOKS_DUE) == 0  # no callback was asked
    reports = store.get_batch(batch.id).reports
    assert set(reports) == {Channel.REPORT_DICOM, Channel.REPORT_STOW}
    assert all(status.state is CallbackState.PENDING and status.delivery_id for status in reports.values())


def test_reports_are_due_when_the_admission_closes_after_every_job_finished(store, redis, due):
    batch, job_ids = opened(store, 2, Reports(study_header=HEADER, dicom_to="PACS@pacs.example:104"))
    succeed(store, job_ids)
    assert due == []  # more instances of the study may still come

    store.close_admission(batch.id)
    store.close_admission(batch.id)  # a repeat announces it again: a task sent twice makes its attempt once

    assert due == [(batch.id, Channel.REPORT_DICOM)] * 2
    assert redis.zrange(deliveries_due_key(Channel.REPORT_DICOM), 0, -1) == [batch.id]
    assert redis.zcard(deliveries_due_key(Channel.REPORT_STOW)) == 0
    assert list(store.get_batch(batch.id).reports) == [Channel.REPORT_DICOM]


def test_a_batch_with_no_image_classified_skips_its_reports_and_says_why(store, redis, due):
    batch, _ = opened(store, 2)
    store.cancel_batch(batch.id)
    store.close_admission(batch.id)

    assert due == []
    reports = store.get_batch(batch.id).reports
    assert {status.state for status in reports.values()} == {CallbackState.SKIPPED}
    assert "no image of the batch was classified" in reports[Channel.REPORT_STOW].last_error
    assert redis.zcard(deliveries_due_key(Channel.REPORT_DICOM)) == 0


def test_a_batch_without_reports_keeps_no_header_and_asks_none(store, due):
    batch, job_ids = opened(store, 1, reports=None)
    store.close_admission(batch.id)
    succeed(store, job_ids)

    assert due == [] and store.get_batch(batch.id).reports is None and store.study_header(batch.id) is None


def test_each_channel_is_claimed_and_recorded_apart(store, redis):
    deliveries = Deliveries(URL)
    batch, job_ids = opened(store, 1)
    store.close_admission(batch.id)
    succeed(store, job_ids)

    dicom = deliveries.claim(batch.id, attempts_seen=0, lease=60, channel=Channel.REPORT_DICOM)
    stow = deliveries.claim(batch.id, attempts_seen=0, lease=60, channel=Channel.REPORT_STOW)
    assert dicom.number == 1 and stow.number == 1 and dicom.fields["report_dicom_to"] == REPORTS.dicom_to
    assert deliveries.claim(batch.id, attempts_seen=0, lease=60, channel=Channel.REPORT_DICOM) is None
    deliveries.record(batch.id, 1, Verdict.DELIVERED, status=0, retry_wait=0, max_age=3600,
                      channel=Channel.REPORT_DICOM)
    deliveries.record(batch.id, 1, Verdict.RETRY, error="refused", retry_wait=30, max_age=3600,
                      channel=Channel.REPORT_STOW)

    reports = store.get_batch(batch.id).reports
    assert (reports[Channel.REPORT_DICOM].state, reports[Channel.REPORT_DICOM].last_status) == \
        (CallbackState.DELIVERED, 0)
    assert (reports[Channel.REPORT_STOW].state, reports[Channel.REPORT_STOW].attempts) == (CallbackState.PENDING, 1)
    assert redis.zcard(deliveries_due_key(Channel.REPORT_DICOM)) == 0
    assert redis.zrange(deliveries_due_key(Channel.REPORT_STOW), 0, -1) == [batch.id]
    deliveries.close()


def test_the_reconciler_resends_an_overdue_report(store, redis):
    batch, job_ids = opened(store, 1, Reports(study_header=HEADER, stow_url="http://127.0.0.1:1/studies"))
    store.close_admission(batch.id)
    succeed(store, job_ids)
    redis.zadd(deliveries_due_key(Channel.REPORT_STOW), {batch.id: 0})

    resent, (message,) = sweep_for_deliveries(store)

    assert resent == 1
    assert message["headers"]["task"] == "pneuradnet.deliver_report"
    assert json.loads(base64.b64decode(message["body"]))[0] == [batch.id, "report_stow", 0]


def test_reports_need_a_destination_and_a_header():
    with pytest.raises(ValueError, match="destination"):
        Reports(study_header=HEADER)
    with pytest.raises(ValueError, match="study header"):
        Reports(study_header=b"", dicom_to="A@h:1")


def test_a_dicom_destination_is_aet_at_host_and_port():
    assert str(DicomDestination.parse(" ORTHANC@pacs.example.org:4242 ")) == "ORTHANC@pacs.example.org:4242"
    for bad in ("pacs.example.org:4242", "ORTHANC@pacs.example.org", "A_TITLE_LONGER_THAN_16@h:104", "A@h:0"):
        with pytest.raises(ValueError, match="AET@host:port"):
            DicomDestination.parse(bad)
    with pytest.raises(ValueError, match="AET@host:port"):
        Settings(dicom_results_to="nowhere")
