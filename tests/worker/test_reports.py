"""A study's findings back into a real PACS: Debian's Orthanc (tests/orthanc.py) holds a study of DX instances made
from the real radiographs (sent to it by dcmtk's storescu, as a modality would); the same instances are classified
by a live worker in a batch opened with reports; its structured report must come into Orthanc's copy of the study,
once, with each image's class and probabilities, by C-STORE and by STOW-RS, after Orthanc was down for a while,
and with explain with a heatmap capture of each image in a series of its own."""

import io
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

from pneuradnet.sr import header_bytes, study_header
from service.channels import Channel, Reports
from service.jobstore import JobStore, Upload
from service.queue import make_celery, send_delivery_task
from service.settings import Settings
from service.webhooks import CallbackState
from tests.api.test_stow import multipart_related
from tests.live_service import TEST_REDIS_URL, enqueue, start_api
from tests.orthanc import AE_TITLE, Orthanc
from tests.pneuradnet.test_sr import findings
from tests.processes import stop, wait_until

pytestmark = pytest.mark.model

PATIENT = {"PatientName": "Roe^Richard", "PatientID": "MRN-31337", "PatientBirthDate": "19500505",
           "PatientSex": "M", "AccessionNumber": "ACC-55", "StudyID": "S-1", "StudyDate": "20260101",
           "StudyTime": "080000", "ReferringPhysicianName": "Grey^Meredith"}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pacs(orthanc: Orthanc) -> Iterator[Orthanc]:
    """Orthanc, running and empty."""
    if not orthanc.answers():
        orthanc.start()
    orthanc.wipe()
    yield orthanc


def study(radiographs: list[Path], folder: Path, count: int = 3) -> list[Path]:
    """`count` DX instances of one new study, from the real radiographs (NORMAL and pneumonia alike), as files."""
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for number, source in enumerate([radiographs[0], radiographs[-1], radiographs[1]][:count], start=1):
        dataset = Dataset()
        dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
        dataset.SOPInstanceUID = generate_uid()
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.Modality, dataset.ViewPosition, dataset.InstanceNumber = "DX", "PA", number
        for keyword, value in PATIENT.items():
            setattr(dataset, keyword, value)
        pixels = np.asarray(Image.open(source).convert("L"))
        dataset.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=8)
        path = folder / f"{number}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def store_in_pacs(pacs: Orthanc, paths: list[Path]) -> None:
    """Send the study to Orthanc as a modality does (dcmtk's storescu)."""
    subprocess.run(["/usr/bin/storescu", "-aet", "PNEURADNET", "-aec", AE_TITLE, "127.0.0.1", str(pacs.dicom_port),
                    *map(str, paths)], check=True, capture_output=True, timeout=60)


def classify_with_reports(store: JobStore, paths: list[Path], reports: Reports, *, explain: bool = False) -> str:
    """Open a batch of the study with reports, as the DICOM intake does, store its instances and classify them."""
    batch, _ = store.open_batch(total=len(paths), reports=reports, explain=explain)
    jobs = store.add_jobs(batch, [Upload(path.name, path.read_bytes()) for path in paths], stored_before=0)
    store.close_admission(batch.id)
    enqueue([job.id for job in jobs])
    return batch.id


def header_of(path: Path) -> bytes:
    return header_bytes(study_header(dcmread(path)))


def report_state(store: JobStore, batch_id: str, channel: Channel):
    batch = store.get_batch(batch_id)
    assert batch is not None and batch.reports is not None
    return batch.reports[channel]


def wait_delivered(store: JobStore, batch_id: str, channel: Channel, timeout: float = 120) -> None:
    wait_until(lambda: report_state(store, batch_id, channel).state not in (CallbackState.PENDING,
                                                                              CallbackState.DELIVERING),
               timeout=timeout, interval=0.2, what=f"the {channel} of batch {batch_id}")
    state = report_state(store, batch_id, channel)
    assert state.state is CallbackState.DELIVERED, state


def instances_by_modality(pacs: Orthanc, study_uid: str) -> dict[str, list[dict]]:
    study_id = pacs.study_id(study_uid)
    assert study_id is not None, "the study is not in the PACS"
    by_modality: dict[str, list[dict]] = {}
    for series in pacs.get(f"/studies/{study_id}/series"):  # type: ignore[attr-defined]
        by_modality.setdefault(series["MainDicomTags"]["Modality"], []).append(series)
    return by_modality


def the_report(pacs: Orthanc, study_uid: str) -> Dataset:
    (series,) = instances_by_modality(pacs, study_uid)["SR"]
    (instance,) = series["Instances"]
    return dcmread(io.BytesIO(pacs.instance_file(instance)))


def expected_findings(store: JobStore, batch_id: str) -> dict[str, tuple[str, dict[str, float]]]:
    jobs = store.get_jobs(store.batch_job_ids(batch_id))
    assert [job.status.value for job in jobs] == ["succeeded"] * len(jobs)
    return {job.result["source"]["sop_instance_uid"]: (job.result["predicted_class"],
                                                      dict(zip(job.result["labels"], job.result["predictions"],
                                                               strict=True)))
            for job in jobs}


def test_the_report_comes_into_the_study_once_by_c_store(store, worker_process, pacs, radiographs, tmp_path):
    paths = study(radiographs, tmp_path)
    store_in_pacs(pacs, paths)
    study_uid = dcmread(paths[0]).StudyInstanceUID
    reports = Reports(study_header=header_of(paths[0]), dicom_to=pacs.dicom_to)

    batch_id = classify_with_reports(store, paths, reports)
    wait_delivered(store, batch_id, Channel.REPORT_DICOM)

    report = the_report(pacs, study_uid)
    assert report.Modality == "SR" and report.VerificationFlag == "UNVERIFIED"
    assert report.PatientID == "MRN-31337" and report.StudyInstanceUID == study_uid
    expected = expected_findings(store, batch_id)
    read_back = findings(report)
    assert {uid: finding for uid, (finding, _) in read_back.items()} == \
        {uid: finding for uid, (finding, _) in expected.items()}
    for uid, (_, probabilities) in expected.items():
        assert read_back[uid][1] == pytest.approx(probabilities, abs=1e-9)
    assert {finding for finding, _ in expected.values()} == {"NORMAL", "PNEUMONIA"}  # both classes are shown
    assert len(instances_by_modality(pacs, study_uid)["DX"][0]["Instances"]) == 3  # the study, joined

    # Delivery tasks handed out again (a broker's redelivery, a reconciler's resend) send nothing more.
    celery = make_celery(Settings(redis_url=TEST_REDIS_URL))
    for attempts_seen in (0, 1):
        send_delivery_task(batch_id, attempts_seen, app=celery, channel=Channel.REPORT_DICOM)
    time.sleep(3)
    celery.close()
    assert report_state(store, batch_id, Channel.REPORT_DICOM).attempts == 1
    assert len(instances_by_modality(pacs, study_uid)["SR"][0]["Instances"]) == 1
    assert pacs.get("/statistics")["CountInstances"] == 4  # type: ignore[index]


def test_the_report_comes_into_the_study_by_stow_rs(store, worker_process, pacs, radiographs, tmp_path):
    paths = study(radiographs, tmp_path, count=2)
    store_in_pacs(pacs, paths)
    study_uid = dcmread(paths[0]).StudyInstanceUID

    batch_id = classify_with_reports(store, paths, Reports(study_header=header_of(paths[0]), stow_url=pacs.stow_url))
    wait_delivered(store, batch_id, Channel.REPORT_STOW)

    report = the_report(pacs, study_uid)
    assert set(findings(report)) == set(expected_findings(store, batch_id))
    assert report_state(store, batch_id, Channel.REPORT_STOW).last_status == 200


def test_the_report_is_retried_until_the_pacs_is_back_and_stored_once(store, worker_process, pacs, radiographs,
                                                                        tmp_path):
    paths = study(radiographs, tmp_path, count=1)
    study_uid = dcmread(paths[0]).StudyInstanceUID
    pacs.stop()

    batch_id = classify_with_reports(store, paths, Reports(study_header=header_of(paths[0]), dicom_to=pacs.dicom_to,
                                                           stow_url=pacs.stow_url))
    wait_until(lambda: report_state(store, batch_id, Channel.REPORT_DICOM).attempts >= 2
               and report_state(store, batch_id, Channel.REPORT_STOW).attempts >= 2,
               timeout=60, interval=0.2, what="two attempts at each destination while the PACS is down")
    down = report_state(store, batch_id, Channel.REPORT_DICOM)
    assert down.state is CallbackState.PENDING and "aborted" in down.last_error
    pacs.start()

    wait_delivered(store, batch_id, Channel.REPORT_DICOM)
    wait_delivered(store, batch_id, Channel.REPORT_STOW)
    (series,) = instances_by_modality(pacs, study_uid)["SR"]
    assert len(series["Instances"]) == 1  # sent to both destinations, stored once: the same SOP instance


def test_with_explain_each_heatmap_comes_in_a_series_of_its_own(store, worker_process, pacs, radiographs,
                                                                 tmp_path):
    paths = study(radiographs, tmp_path, count=2)
    study_uid = dcmread(paths[0]).StudyInstanceUID

    batch_id = classify_with_reports(store, paths, Reports(study_header=header_of(paths[0]), dicom_to=pacs.dicom_to),
                                     explain=True)
    wait_delivered(store, batch_id, Channel.REPORT_DICOM, timeout=240)

    by_modality = instances_by_modality(pacs, study_uid)
    (captures,) = by_modality["OT"]
    (report,) = by_modality["SR"]
    assert len(captures["Instances"]) == 2 and captures["ID"] != report["ID"]
    capture = dcmread(io.BytesIO(pacs.instance_file(captures["Instances"][0])))
    sources = {dcmread(path).SOPInstanceUID for path in paths}
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID in sources
    assert capture.PatientID == "MRN-31337" and "not a diagnosis" in capture.SeriesDescription


def test_a_study_sent_by_stow_rs_gets_its_report_back_in_the_pacs(store, worker_process, pacs, radiographs,
                                                                  tmp_path, tmp_path_factory):
    paths = study(radiographs, tmp_path, count=2)
    store_in_pacs(pacs, paths)
    study_uid = dcmread(paths[0]).StudyInstanceUID
    api, url = start_api(tmp_path / "api.log", DICOM_RESULTS_TO=pacs.dicom_to)
    try:
        body, content_type = multipart_related([path.read_bytes() for path in paths])
        answer = httpx.post(f"{url}/dicomweb/studies/{study_uid}", content=body,
                            headers={"Content-Type": content_type}, timeout=30)
        assert answer.status_code == 200, answer.text
        (batch_id,) = answer.json()["00091010"]["Value"]

        wait_delivered(store, batch_id, Channel.REPORT_DICOM)
    finally:
        stop(api)
    report = the_report(pacs, study_uid)
    assert report.PatientID == "MRN-31337"  # filed into the patient's study, from the header the API kept
    assert set(findings(report)) == set(expected_findings(store, batch_id)) == \
        {dcmread(path).SOPInstanceUID for path in paths}
    worker_logs = list(tmp_path_factory.getbasetemp().glob("worker*/worker.log"))  # the live worker's (live_service)
    assert worker_logs
    for log in [tmp_path / "api.log", *worker_logs]:  # patient data travels only inside DICOM objects
        assert not any(value in log.read_text() for value in ("MRN-31337", "Roe^Richard", "ACC-55", "19500505"))
