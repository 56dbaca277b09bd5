"""A finished study batch's report: what a batch opened from a DICOM study asks (Reports, with its study header),
and the DICOM objects its delivery sends (the structured report, and with DICOM_EXPLAIN each image's heatmap
capture), built from the job store by pneuradnet/sr.py. The sending is the worker's (worker/reports.py); the
delivery's state is service/deliveries.py's, as a callback's.

A batch opened with explain (DICOM_EXPLAIN) sends a capture of each image that got a heatmap. The report's UIDs
derive from the batch id: every attempt, to every destination, sends the same instances, which
a PACS stores once.
"""

import io

from pydicom import dcmread
from pydicom.dataset import Dataset

from pneuradnet.sr import ClassifiedImage, ReportError, heatmap_capture, structured_report
from service.jobstore import JobStatus, JobStore


def report_objects(store: JobStore, batch_id: str, *, with_captures: bool) -> list[Dataset]:
    """The report of a finished batch, then (with_captures) a heatmap capture of each image that has one.
    ReportError when there is nothing to send: the study header expired, or no DICOM image succeeded."""
    kept = store.study_header(batch_id)
    if kept is None:
        raise ReportError("the study header has expired with the batch: the report cannot be written")
    header = dcmread(io.BytesIO(kept))
    jobs = [job for job in store.get_jobs(store.batch_job_ids(batch_id))
            if job.status is JobStatus.SUCCEEDED and job.result is not None]
    classified = []
    for job in jobs:
        try:
            classified.append((job, ClassifiedImage.from_result(job.result or {})))
        except ReportError:
            continue  # an image that is not DICOM cannot be referenced: the report names the others
    if not classified:
        raise ReportError("no DICOM image of the batch was classified: there is nothing to report")
    model = (classified[0][0].result or {})["model"]
    objects = [structured_report(header, [image for _, image in classified], model_name=model["name"],
                                 model_version=model["version"], report_id=batch_id)]
    if with_captures:
        for number, (job, image) in enumerate(classified, start=1):
            png = store.heatmap(job.id)
            if png is not None:
                objects.append(heatmap_capture(header, image, png, model_name=model["name"],
                                               model_version=model["version"], report_id=batch_id,
                                               instance_number=number))
    return objects
