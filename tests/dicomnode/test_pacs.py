"""Orthanc, the PACS, sends a study to the node (its REST API's /modalities/{id}/store, a C-STORE as any PACS
routes a study) and gets the study's structured report back into the same study."""

import io
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

from service.channels import Channel
from service.jobstore import JobStore
from service.webhooks import CallbackState
from tests.dicomnode.conftest import Node, batches
from tests.dicomnode.instances import PATIENT, encoded, radiograph_instance
from tests.orthanc import Orthanc
from tests.pneuradnet.test_sr import findings
from tests.processes import wait_until

pytestmark = pytest.mark.model


def test_a_study_orthanc_sends_gets_its_report_back_into_the_study(
        start_node: Callable[..., Node], store: JobStore, worker_process, radiographs: list[Path], tmp_path: Path):
    pacs = Orthanc(tmp_path / "orthanc")
    (tmp_path / "orthanc").mkdir()
    pacs.start()
    try:
        node = start_node(DICOM_RESULTS_TO=pacs.dicom_to, DICOM_STUDY_TIMEOUT="2")
        httpx.put(f"{pacs.url}/modalities/node", json={"AET": "PNEURADNET", "Host": "127.0.0.1", "Port": node.port},
                  timeout=10).raise_for_status()
        study_uid = generate_uid()
        instances = [radiograph_instance(radiographs[0], study_uid=study_uid),
                     radiograph_instance(radiographs[-1], study_uid=study_uid,
                                         sop_class=ComputedRadiographyImageStorage)]
        for dataset in instances:
            httpx.post(f"{pacs.url}/instances", content=encoded(dataset), timeout=30).raise_for_status()

        sent = httpx.post(f"{pacs.url}/modalities/node/store",
                          json={"Resources": [pacs.study_id(study_uid)], "Synchronous": True}, timeout=60)

        assert sent.status_code == 200, sent.text
        (batch,) = batches(store)
        assert batch.owner == "dicom:ORTHANCTEST" and batch.total == 2
        wait_until(lambda: store.get_batch(batch.id).reports[Channel.REPORT_DICOM].state not in
                   (CallbackState.PENDING, CallbackState.DELIVERING), timeout=120, interval=0.2,
                   what="the study's report to be delivered")
        assert store.get_batch(batch.id).reports[Channel.REPORT_DICOM].state is CallbackState.DELIVERED
        series = pacs.get(f"/studies/{pacs.study_id(study_uid)}/series")
        (report_series,) = [item for item in series if item["MainDicomTags"]["Modality"] == "SR"]
        (report_id,) = report_series["Instances"]
        report = dcmread(io.BytesIO(pacs.instance_file(report_id)))
    finally:
        pacs.stop()

    assert report.StudyInstanceUID == study_uid and report.PatientID == PATIENT["PatientID"]  # filed in the study
    jobs = store.get_jobs(store.batch_job_ids(batch.id))
    assert findings(report) == {
        job.filename.removesuffix(".dcm"): (job.result["predicted_class"],
                                            pytest.approx(dict(zip(job.result["labels"], job.result["predictions"],
                                                                   strict=True)), abs=1e-4))
        for job in jobs}
    assert {dataset.SOPInstanceUID for dataset in instances} == {job.filename.removesuffix(".dcm") for job in jobs}
    assert PATIENT["PatientName"] not in node.log() and PATIENT["PatientID"] not in node.log()
