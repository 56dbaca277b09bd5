"""Batches that grow as a DICOM study's instances arrive, and the study grouping in Redis (service/studies.py)."""

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from service.jobstore import AdmissionClosed, JobStatus, JobStore, QueueFull, Upload
from service.keys import ADMISSION_BYTES, ADMISSIONS
from service.studies import StudyGroups
from tests.live_service import TEST_REDIS_URL

QUIET = 0.5


@pytest.fixture
def studies(store: JobStore) -> Iterator[StudyGroups]:
    groups = StudyGroups(TEST_REDIS_URL, store, quiet=QUIET)
    yield groups
    groups.close()


def arrive(store: JobStore, studies: StudyGroups, study: str, name: str, *, max_queue: int = 100) -> str:
    """One instance of `study`, stored as the node stores it; its job id."""
    batch_id = studies.batch_of(study, owner="dicom:CT1")
    job_id = str(uuid.uuid4())
    studies.grow(study, batch_id, job_id=job_id, image_bytes=len(name), max_queue=max_queue)
    batch = store.get_batch(batch_id)
    (job,) = store.add_jobs(batch, [Upload(name, name.encode())], stored_before=-1, job_ids=[job_id])
    return job.id


def test_instances_of_one_study_form_one_batch_that_closes_when_quiet(store: JobStore, studies: StudyGroups):
    first = arrive(store, studies, "1.2.3", "a.dcm")
    second = arrive(store, studies, "1.2.3", "b.dcm")
    other = arrive(store, studies, "1.2.4", "c.dcm")

    batch_id = store.get_job(first).batch_id
    assert store.get_job(second).batch_id == batch_id != store.get_job(other).batch_id
    batch = store.get_batch(batch_id)
    assert batch.total == 2 and batch.growing and not batch.done and batch.owner == "dicom:CT1"
    assert store.batch_job_ids(batch_id) == [first, second]
    assert studies.close_quiet() == []  # not quiet yet

    time.sleep(QUIET + 0.1)
    assert sorted(studies.close_quiet()) == sorted([batch_id, store.get_job(other).batch_id])
    closed = store.get_batch(batch_id)
    assert closed.total == 2 and not closed.growing and closed.interrupted == 0
    assert arrive(store, studies, "1.2.3", "late.dcm") not in (first, second)
    assert store.get_job(arrive(store, studies, "1.2.3", "later.dcm")).batch_id != batch_id


def test_a_growing_batch_whose_jobs_all_finished_is_not_done_until_it_closes(store: JobStore, studies: StudyGroups):
    job_id = arrive(store, studies, "1.2.3", "a.dcm")
    store.claim([job_id], token="run", lease=60)
    store.succeed_many({job_id: {"n": 1}}, holder="run")

    batch = store.get_batch(store.get_job(job_id).batch_id)
    assert batch.finished == batch.total == 1 and not batch.done
    time.sleep(QUIET + 0.1)
    studies.close_quiet()
    assert store.get_batch(batch.id).done


def test_an_instance_beyond_max_queue_is_refused_and_reserves_nothing(store: JobStore, studies: StudyGroups,
                                                                       redis: Redis):
    arrive(store, studies, "1.2.3", "a.dcm", max_queue=1)

    with pytest.raises(QueueFull):
        arrive(store, studies, "1.2.3", "b.dcm", max_queue=1)
    batch_id = studies.batch_of("1.2.3", owner="dicom:CT1")
    assert store.get_batch(batch_id).total == 1 and store.queued_count() == 1
    assert redis.hget(ADMISSIONS, batch_id) is None


def test_a_study_being_stored_is_not_closed_and_a_closed_one_takes_no_more(store: JobStore, studies: StudyGroups):
    batch_id = studies.batch_of("1.2.3", owner="dicom:CT1")
    reserved = str(uuid.uuid4())
    studies.grow("1.2.3", batch_id, job_id=reserved, image_bytes=10, max_queue=100)
    time.sleep(QUIET + 0.1)

    assert studies.close_quiet() == []  # its instance is still being written
    store.add_jobs(store.get_batch(batch_id), [Upload("a.dcm", b"a")], stored_before=-1, job_ids=[reserved])
    assert studies.close_quiet() == [batch_id]
    with pytest.raises(AdmissionClosed):
        studies.grow("1.2.3", batch_id, job_id=str(uuid.uuid4()), image_bytes=10, max_queue=100)
    assert store.get_batch(batch_id).total == 1


def test_a_place_given_back_leaves_the_batch_as_it_was(store: JobStore, studies: StudyGroups, redis: Redis):
    batch_id = studies.batch_of("1.2.3", owner="dicom:CT1")
    job_id = str(uuid.uuid4())
    studies.grow("1.2.3", batch_id, job_id=job_id, image_bytes=10, max_queue=100)

    assert store.shrink_batch(batch_id, job_id=job_id, image_bytes=10)
    assert not store.shrink_batch(batch_id, job_id=job_id, image_bytes=10)  # a repeat changes nothing
    assert store.get_batch(batch_id).total == 0 and redis.hget(ADMISSIONS, batch_id) is None


def test_an_open_study_is_kept_alive_for_the_reconciler_only_while_a_node_says_so(store: JobStore,
                                                                                        redis: Redis):
    studies = StudyGroups(TEST_REDIS_URL, store, quiet=60)
    batch_id = studies.batch_of("1.2.3", owner="dicom:CT1")
    studies.grow("1.2.3", batch_id, job_id=str(uuid.uuid4()), image_bytes=10, max_queue=100)
    time.sleep(1.1)

    studies.keep_open()  # a live node's turn: the study waits within its quiet time
    assert batch_id not in store.stalled_admissions(idle_for=1.0)
    time.sleep(1.1)  # no node any more
    assert batch_id in store.stalled_admissions(idle_for=1.0)
    studies.close()


def test_the_status_of_a_job_in_a_growing_batch_is_queued(store: JobStore, studies: StudyGroups):
    job_id = arrive(store, studies, "1.2.3", "a.dcm")
    assert store.get_job(job_id).status is JobStatus.QUEUED and store.queued_count() == 1


def test_an_image_written_from_its_file_is_its_job_s_and_frees_the_bytes_reserved(
        store: JobStore, studies: StudyGroups, redis: Redis, tmp_path: Path):
    data = bytes(range(256)) * 10_000  # 2.56 MB, sent a megabyte at a time
    batch_id = studies.batch_of("1.2.3", owner="dicom:CR1")
    job_id = str(uuid.uuid4())
    studies.grow("1.2.3", batch_id, job_id=job_id, image_bytes=len(data), max_queue=100)
    assert int(redis.hget(ADMISSION_BYTES, batch_id)) > len(data)

    (tmp_path / "a.dcm").write_bytes(data)
    with (tmp_path / "a.dcm").open("rb") as file:
        written = store.write_image_file(job_id, file, size=len(data))
    store.add_jobs(store.get_batch(batch_id), [Upload("a.dcm", b"", written=written)], stored_before=-1,
                   job_ids=[job_id])

    assert written == len(data) and store.images([job_id]) == [data]
    assert redis.hget(ADMISSION_BYTES, batch_id) is None and redis.hget(ADMISSIONS, batch_id) is None
