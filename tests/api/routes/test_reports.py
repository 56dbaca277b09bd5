"""GET /batches/{id} of a batch opened from a DICOM study with reports: each destination's delivery, as the
callback's is shown, and nothing of the study header (it is patient data)."""

import httpx
from redis import Redis

from service.channels import Reports
from service.jobstore import JobStore, Upload

HEADER = b"...Roe^Richard...MRN-31337..."  # opaque to the store: what matters is that it is never shown


async def test_a_batch_shows_each_reports_delivery_and_never_the_study_header(api: httpx.AsyncClient,
                                                                              store: JobStore, redis_db: Redis):
    batch, _ = store.open_batch(total=1, reports=Reports(study_header=HEADER, dicom_to="PACS@pacs.example:104",
                                                         stow_url="http://pacs.example/dicom-web/studies"))
    (job,) = store.add_jobs(batch, [Upload("1.dcm", b"dcm")], stored_before=0)
    store.close_admission(batch.id)
    store.cancel(job.id)  # nothing classified: the reports are skipped

    answer = await api.get(f"/batches/{batch.id}")

    assert answer.status_code == 200
    reports = answer.json()["reports"]
    assert set(reports) == {"report_dicom", "report_stow"}
    assert reports["report_dicom"]["state"] == "skipped" and reports["report_dicom"]["attempts"] == 0
    assert "no image of the batch was classified" in reports["report_stow"]["last_error"]
    assert "Roe" not in answer.text and "MRN" not in answer.text
    plain, _ = store.open_batch(total=0)
    assert (await api.get(f"/batches/{plain.id}")).json()["reports"] is None
