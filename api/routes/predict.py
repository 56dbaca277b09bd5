"""The original synchronous contract, kept for existing clients: one image in, its prediction out."""

from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from api.auth import OwnerDep
from api.deps import AsyncRedisDep, DispatcherDep, SettingsDep, StoreDep
from api.problems import ProblemError, problem_responses
from api.schemas import LegacyPrediction
from api.submission import submit_batch, wait_for_job
from api.uploads import read_uploads
from service.jobstore import JobStatus, Lane

router = APIRouter(tags=["predict (synchronous)"])


@router.post("/predict/", response_model=LegacyPrediction,
             responses=problem_responses(400, 401, 413, 422, 429, 500, 503, 504))
@router.post("/predict", response_model=LegacyPrediction, include_in_schema=False)
async def predict(
    settings: SettingsDep,
    store: StoreDep,
    redis: AsyncRedisDep,
    dispatcher: DispatcherDep,
    owner: OwnerDep,
    file: Annotated[UploadFile, File(description="One image (PNG, JPEG or DICOM)")],
) -> LegacyPrediction:
    uploads = await read_uploads([file], max_bytes=settings.max_upload_bytes,
                                 max_unzipped_bytes=settings.max_unzipped_bytes, max_files=1)
    # A person waits at the screen for this answer: always the interactive lane.
    _, (submitted,) = await submit_batch(store, dispatcher, uploads, owner=owner, max_queue=settings.max_queue,
                                         lane=Lane.INTERACTIVE)
    job = await wait_for_job(store, redis, submitted.id, timeout=settings.predict_timeout)
    if job is None:
        raise ProblemError(500, "job-lost", f"job {submitted.id} disappeared before it finished")
    if job.status is JobStatus.SUCCEEDED:
        return LegacyPrediction.of(job)
    if job.status is JobStatus.FAILED and job.error:
        raise ProblemError(job.error["status"], job.error["type"].rsplit(":", 1)[-1], job.error["detail"])
    raise ProblemError(504, "prediction-timeout",
                       f"no result within {settings.predict_timeout:g} s (PREDICT_TIMEOUT); the job goes on: "
                       f"poll GET /jobs/{job.id}", headers={"Location": f"/jobs/{job.id}"})
