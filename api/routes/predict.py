"""The original synchronous contract, kept for existing clients: one image in, its prediction out."""

from functools import partial
from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from starlette.concurrency import run_in_threadpool

from api.auth import OwnerDep
from api.deps import AsyncRedisDep, DispatcherDep, ImagesDep, SettingsDep, StoreDep
from api.large_pieces import LargePieceRoute
from api.problems import ProblemError, problem_responses
from api.schemas import LegacyPrediction
from api.submission import submit_batch, wait_for_job
from api.uploads import plan_uploads
from service.jobstore import JobStatus, Lane

router = APIRouter(tags=["predict (synchronous)"], route_class=LargePieceRoute)


@router.post("/predict/", response_model=LegacyPrediction,
             responses=problem_responses(400, 401, 413, 422, 429, 500, 503, 504))
@router.post("/predict", response_model=LegacyPrediction, include_in_schema=False)
async def predict(
    settings: SettingsDep,
    store: StoreDep,
    images: ImagesDep,
    redis: AsyncRedisDep,
    dispatcher: DispatcherDep,
    owner: OwnerDep,
    file: Annotated[UploadFile, File(description="One image (PNG, JPEG or DICOM)")],
) -> LegacyPrediction:
    plan = await run_in_threadpool(partial(plan_uploads, [file], max_bytes=settings.max_upload_bytes,
                                           max_unzipped_bytes=settings.max_unzipped_bytes, max_files=1))
    try:
        # A person waits at the screen for this answer: always the interactive lane.
        _, (submitted,) = await submit_batch(store, images, dispatcher, plan, owner=owner, max_queue=settings.max_queue,
                                             lane=Lane.INTERACTIVE, chunk_size=1)
    finally:
        plan.close()
    if submitted.error is not None:  # an archive's one member could not be read
        raise ProblemError(submitted.error["status"], submitted.error["type"].rsplit(":", 1)[-1],
                           submitted.error["detail"])
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
