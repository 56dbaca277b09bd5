import logging
from functools import partial
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, File, Header, Query, Request, Response, UploadFile
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.auth import OwnerDep
from api.deps import AsyncRedisDep, DispatcherDep, ImagesDep, SettingsDep, StoreDep
from api.large_pieces import LargePieceRoute
from api.problems import ProblemError, problem_responses
from api.references import ReferenceSubmission, plan_references
from api.schemas import JobAnswer, JobPublic, SubmitResponse
from api.submission import choose_lane, submit_batch, wait_for_job
from api.uploads import plan_uploads
from service.jobstore import Job, JobStatus, JobStore, Lane
from service.logs import job_event
from service.webhooks import Callback, CallbackRefused, HostPattern, check_callback_url

log = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"], route_class=LargePieceRoute)

MAX_WAIT = 30.0
"""Longest long-poll a client may ask of GET /jobs/{id}, in seconds."""

POLL_AFTER = 1
"""Seconds a client is told to wait before polling an unfinished job again."""


class PngResponse(Response):
    """A PNG image; FastAPI documents a route's 200 with this media type."""

    media_type = "image/png"


@router.post("/jobs", status_code=202, response_model=SubmitResponse,
             responses=problem_responses(400, 401, 409, 413, 422, 429, 503),
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "schema": ReferenceSubmission.model_json_schema()}}}})
async def submit_jobs(
    request: Request,
    response: Response,
    settings: SettingsDep,
    store: StoreDep,
    images: ImagesDep,
    dispatcher: DispatcherDep,
    owner: OwnerDep,
    files: Annotated[list[UploadFile], File(description="Images (PNG, JPEG, DICOM) or ZIP archives of them")] = [],  # noqa: B006
    file: Annotated[UploadFile | None, File(description="One image; accepted for old clients")] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200, description="Repeat-safe submission")] = None,
    explain: Annotated[bool, Query(description="Also make a Grad-CAM heatmap of what the model looked at, for "
                                               "each image (GET /jobs/{id}/heatmap.png); takes longer")] = False,
    priority: Annotated[Lane | None, Query(description="The lane: by default a submission of at most "
                                           "INTERACTIVE_MAX_IMAGES images is interactive (served before bulk work) "
                                           "and a larger one bulk (shared fairly between API keys); `bulk` sends a "
                                           "small one to the bulk lane, `interactive` is refused for a large one")]
    = None,
    callback_url: Annotated[str | None, Query(description="When every job of the batch has finished, POST a signed "
                                              "JSON summary here (README, \"Callbacks\"); its host must be one "
                                              "WEBHOOK_ALLOWED_HOSTS allows")] = None,
) -> SubmitResponse:
    if explain and not settings.explain_enabled:  # refused before anything is stored or queued
        raise ProblemError(422, "explain-disabled", "explanations are turned off on this service "
                           "(EXPLAIN_ENABLED=0): submit without explain=true")
    callback = callback_for(callback_url, request, settings.webhook_host_patterns)  # also before anything is stored
    if request.headers.get("content-type", "").startswith("application/json"):
        submission = _references(await request.body())
        plan = await run_in_threadpool(partial(plan_references, submission, sources=settings.image_source_list,
                                               objects=images.objects, limit=settings.max_references))
    else:
        plan = await run_in_threadpool(partial(
            plan_uploads, [*files, *([file] if file else [])], max_bytes=settings.max_upload_bytes,
            max_unzipped_bytes=settings.max_unzipped_bytes, max_files=settings.max_files_per_request))
    try:
        lane = choose_lane(len(plan.images), priority=priority, interactive_max=settings.interactive_max_images)
        batch, jobs = await submit_batch(store, images, dispatcher, plan, owner=owner, idempotency=idempotency_key,
                                         max_queue=settings.max_queue, explain=explain, lane=lane,
                                         chunk_size=settings.max_batch, task_size=settings.bulk_chunk,
                                         callback=callback)
    finally:
        plan.close()
    response.headers["Location"] = f"/batches/{batch.id}"
    return SubmitResponse(batch_id=batch.id, lane=batch.lane, jobs=[JobPublic.of(job) for job in jobs])


def _references(body: bytes) -> ReferenceSubmission:
    """The JSON body of a submission by reference; 422 naming what is wrong with it."""
    try:
        return ReferenceSubmission.model_validate_json(body)
    except ValidationError as invalid:
        detail = "; ".join(f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']}"
                           for error in invalid.errors())
        raise ProblemError(422, "invalid-request", f"the request is invalid: {detail}") from invalid


def callback_for(url: str | None, request: Request, allowed: tuple[HostPattern, ...]) -> Callback | None:
    """The callback a submission asks, with the links to its batch as the client reached this service; 422 for a
    URL the service will not call (nothing is requested of it)."""
    if url is None:
        return None
    try:
        check_callback_url(url, allowed)
    except CallbackRefused as refused:
        kind = "callbacks-disabled" if not allowed else "invalid-callback-url"
        raise ProblemError(422, kind, str(refused)) from refused
    return Callback(url=url, api_url=str(request.base_url))


@router.get("/jobs/{job_id}", response_model=JobAnswer, responses=problem_responses(401, 404, 422, 503))
async def get_job(
    job_id: UUID,
    response: Response,
    store: StoreDep,
    redis: AsyncRedisDep,
    owner: OwnerDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT, description="Seconds to wait for the job to finish")] = 0,
) -> JobAnswer:
    job = await owned_job(store, str(job_id), owner)
    if wait and not job.status.finished:
        job = await wait_for_job(store, redis, job.id, timeout=wait) or job
    if not job.status.finished:
        response.headers["Retry-After"] = str(POLL_AFTER)
    return JobAnswer.of(job)


@router.get("/jobs/{job_id}/heatmap.png", response_class=PngResponse, response_model=None,
            responses={200: {"description": "The radiograph at its own size with the Grad-CAM heatmap of its "
                                            "predicted class blended over it",
                             "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
                       **problem_responses(401, 404, 409, 422, 503)})
async def get_heatmap(job_id: UUID, store: StoreDep, owner: OwnerDep) -> PngResponse:
    """The heatmap of a job submitted with `explain=true`, once it has succeeded.

    404 if the job was submitted without explain, failed, or its explanation failed (its
    `result.explanation_error` says why); 409, with Retry-After, while an explained job has not finished.
    """
    job = await owned_job(store, str(job_id), owner)
    if job.explain and not job.status.finished:
        raise ProblemError(409, "job-not-finished", f"job {job.id} is {job.status.value}: its heatmap comes when it "
                           f"has succeeded; poll GET /jobs/{job.id}", headers={"Retry-After": str(POLL_AFTER)})
    png = await run_in_threadpool(store.heatmap, job.id) if job.explain else None
    if png is None:
        raise ProblemError(404, "heatmap-not-found", f"job {job.id} has no heatmap: {_no_heatmap_reason(job)}")
    # no-store: the heatmap shows the radiograph itself, which no browser or proxy should keep.
    return PngResponse(png, headers={"Cache-Control": "no-store",
                                     "Content-Disposition": f'inline; filename="heatmap-{job.id}.png"'})


def _no_heatmap_reason(job: Job) -> str:
    if not job.explain:
        return "it was not submitted with explain=true"
    if job.status is not JobStatus.SUCCEEDED:
        return f"its status is {job.status.value}"
    return (job.result or {}).get("explanation_error") or "it has expired"


@router.delete("/jobs/{job_id}", response_model=JobAnswer,
               responses=problem_responses(401, 404, 409, 422, 503))
async def cancel_job(job_id: UUID, store: StoreDep, owner: OwnerDep) -> JobAnswer:
    """Cancel a job that has not started; a canceled job never runs."""
    job = await owned_job(store, str(job_id), owner)
    if not await run_in_threadpool(store.cancel, job.id):
        current = await owned_job(store, job.id, owner)
        raise ProblemError(409, "not-cancelable", f"job {job.id} is {current.status.value}: only a queued job "
                           "can be canceled")
    job_event(log, "canceled", job.id, batch_id=job.batch_id, status="canceled")
    return JobAnswer.of(await owned_job(store, job.id, owner))


async def owned_job(store: JobStore, job_id: str, owner: str) -> Job:
    job = await run_in_threadpool(store.get_job, job_id)
    if job is None or job.owner != owner:  # another key's job is as unknown as a missing one
        raise ProblemError(404, "job-not-found", f"there is no job {job_id} (or it has expired)")
    return job
