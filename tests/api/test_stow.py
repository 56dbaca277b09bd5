"""DICOMweb STOW-RS in, end to end: the live API and worker store a study's instances as one batch, answer with
PS3.18's Store Instances Response, and classify them as the same files uploaded to POST /jobs."""

import io
import uuid
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation, generate_uid
from redis import Redis

from service.keys import batch_key
from tests.dicomnode.instances import PATIENT, radiograph_instance
from tests.live_service import TEST_REDIS_URL

pytestmark = pytest.mark.model

REFERENCED, FAILED, FAILURE_REASON, BATCHES = "00081199", "00081198", "00081197", "00091010"


def instance(jpeg: Path, study: str, *, sop_class: str = DigitalXRayImageStorageForPresentation) -> bytes:
    """The radiograph as an uncompressed DICOM instance of `study`, its patient named (PATIENT)."""
    buffer = io.BytesIO()
    radiograph_instance(jpeg, study_uid=study, sop_class=sop_class).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart_related(parts: list[bytes], *, part_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n"
                    for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(client: httpx.Client, path: str, parts: list[bytes], **options: str) -> httpx.Response:
    body, content_type = multipart_related(parts, **options)
    return client.post(path, content=body, headers={"Content-Type": content_type, "Accept": "application/dicom+json"})


def sop_instances(items: list[dict]) -> list[str]:
    return [item["00081155"]["Value"][0] for item in items]


def test_a_study_becomes_one_batch_classified_as_its_files_uploaded(client: httpx.Client, radiographs: list[Path]):
    study = generate_uid()
    normal, pneumonia = radiographs[0], radiographs[-1]
    files = [instance(normal, study), instance(pneumonia, study)]
    ct = instance(normal, study, sop_class=CTImageStorage)
    stranger = instance(normal, generate_uid())

    answer = stow(client, f"/dicomweb/studies/{study}", [*files, ct, stranger])

    assert answer.status_code == 202  # stored some, failed others
    assert answer.headers["content-type"] == "application/dicom+json"
    response = answer.json()
    stored = sop_instances(response[REFERENCED]["Value"])
    assert len(stored) == 2
    failures = {item["00081155"]["Value"][0]: item[FAILURE_REASON]["Value"][0] for item in response[FAILED]["Value"]}
    assert sorted(failures.values()) == [0x0122, 0xA900]  # a CT is not a radiograph; another study is refused
    (batch_id,) = response[BATCHES]["Value"]
    assert answer.headers["location"] == f"/batches/{batch_id}"

    batch = client.get(f"/batches/{batch_id}", params={"wait": 30}).json()
    assert batch["counts"]["succeeded"] == 2, batch
    jobs = {job["filename"]: job for job in batch["jobs"]}
    assert sorted(jobs) == sorted(f"{uid}.dcm" for uid in stored)  # named by their UIDs, never by a patient
    uploaded = client.post("/jobs", files=[("files", (f"{n}.dcm", data, "application/dicom"))
                                           for n, data in enumerate(files)]).json()["jobs"]
    for sop, job in zip(stored, uploaded, strict=True):
        same = client.get(f"/jobs/{job['id']}", params={"wait": 30}).json()["result"]
        assert jobs[f"{sop}.dcm"]["result"]["predictions"] == pytest.approx(same["predictions"], abs=1e-5)
    assert [jobs[f"{sop}.dcm"]["result"]["predicted_class"] for sop in stored] == ["NORMAL", "PNEUMONIA"]
    csv = client.get(f"/batches/{batch_id}", params={"format": "csv"}).text
    assert all(f"{sop}.dcm" in csv for sop in stored)
    for text in (answer.text, str(batch), str(jobs), csv):
        assert not any(value in text for value in (*PATIENT.values(), "Doe", "Jane"))


def test_instances_of_any_study_each_make_their_own_batch(client: httpx.Client, radiographs: list[Path]):
    first, second = generate_uid(), generate_uid()

    answer = stow(client, "/dicomweb/studies", [instance(radiographs[0], first), instance(radiographs[1], second),
                                                instance(radiographs[2], first)])

    assert answer.status_code == 200
    batch_ids = answer.json()[BATCHES]["Value"]
    totals = sorted(client.get(f"/batches/{batch_id}").json()["total"] for batch_id in batch_ids)
    assert totals == [1, 2]


def test_nothing_readable_is_a_conflict_and_stores_nothing(client: httpx.Client):
    redis = Redis.from_url(TEST_REDIS_URL)
    before = set(redis.scan_iter(batch_key("*")))

    answer = stow(client, "/dicomweb/studies", [b"not a DICOM file at all" * 10])

    assert answer.status_code == 409
    (failure,) = answer.json()[FAILED]["Value"]
    assert failure[FAILURE_REASON]["Value"] == [0xC000]
    assert BATCHES not in answer.json()
    assert set(redis.scan_iter(batch_key("*"))) == before


def test_a_body_that_is_not_multipart_related_is_refused_as_a_problem(client: httpx.Client,
                                                                      radiographs: list[Path]):
    answer = client.post("/dicomweb/studies", content=radiographs[0].read_bytes(),
                         headers={"Content-Type": "image/jpeg"})

    assert answer.status_code == 415
    assert answer.headers["content-type"] == "application/problem+json"
    assert "multipart/related" in answer.json()["detail"]


def test_dicomweb_clients_store_instances_and_read_the_answer(client: httpx.Client, radiographs: list[Path]):
    """dicomweb-client, an independent implementation of PS3.18, sends a study and parses the answer."""
    study = generate_uid()
    datasets = [dcmread(io.BytesIO(instance(jpeg, study))) for jpeg in radiographs[:2]]
    web = DICOMwebClient(url=f"{str(client.base_url).rstrip('/')}/dicomweb")

    answer = web.store_instances(datasets, study_instance_uid=study)

    stored = sorted(item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence)
    assert stored == sorted(dataset.SOPInstanceUID for dataset in datasets)
    assert "FailedSOPSequence" not in answer
    batch_id = answer[0x0009, 0x1010].value  # the private element naming the study's batch
    batch = client.get(f"/batches/{batch_id}", params={"wait": 30}).json()
    assert batch["counts"]["succeeded"] == 2
