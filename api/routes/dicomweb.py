"""DICOMweb STOW-RS in (PS3.18 10.5, Store Instances): a PACS or a script sends instances over HTTP; each study
becomes a batch, as the DICOM node makes one, and the answer follows PS3.18's Store Instances Response
(`application/dicom+json`) and names the batches, so the client can follow them with GET /batches/{id}. With
DICOM_RESULTS_TO or DICOM_RESULTS_STOW_URL set, each study's findings go back as a structured report once its
batch has finished (service/reports.py, worker/reports.py), with heatmap captures under DICOM_EXPLAIN."""

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.auth import OwnerDep
from api.deps import DispatcherDep, ImagesDep, SettingsDep, StoreDep
from api.large_pieces import LargePieceRoute
from api.problems import ProblemError, problem_responses
from api.stow import FailureReason, Instance, StowBody, read_stow_body, referenced
from api.submission import choose_lane, submit_batch
from api.uploads import UploadPlan
from service.channels import reports_asked
from service.jobstore import Batch

log = logging.getLogger(__name__)
router = APIRouter(tags=["dicomweb"], route_class=LargePieceRoute)

DICOM_JSON = "application/dicom+json"
CHUNK_BYTES = 64 << 20
"""Most bytes of images one chunk of a study reads into the API's memory at once: a chunk is MAX_BATCH images,
and 16 full-size radiographs would be 480 MB."""

PRIVATE_CREATOR = "PNEURADNET"
"""The private block (0009,10xx) of the response that names the batches: (0009,1010) their ids."""

_STOW_BODY = {"requestBody": {"required": True, "content": {
    'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}}},
    "responses": {"200": {"description": "Every instance stored as a job: PS3.18's Store Instances Response, with "
                                         "the batches in (0009,1010)", "content": {DICOM_JSON: {}}},
                  "202": {"description": "Some instances stored, others failed (FailedSOPSequence with their "
                                         "FailureReason)", "content": {DICOM_JSON: {}}},
                  "409": {"description": "No instance could be stored: each failed with its FailureReason",
                          "content": {DICOM_JSON: {}}}}}
_STUDY_UID = Path(pattern=r"^[0-9.]{1,64}$", description="The StudyInstanceUID every instance must belong to")


@router.post("/dicomweb/studies", responses=problem_responses(400, 401, 413, 415, 429, 503),
             openapi_extra=_STOW_BODY, response_class=JSONResponse)
async def store_instances(request: Request, settings: SettingsDep, store: StoreDep, images: ImagesDep,
                          dispatcher: DispatcherDep, owner: OwnerDep) -> JSONResponse:
    """Store instances of any studies: one batch per study."""
    return await _store(request, settings, store, images, dispatcher, owner, study_uid=None)


@router.post("/dicomweb/studies/{study_uid}", responses=problem_responses(400, 401, 413, 415, 422, 429, 503),
             openapi_extra=_STOW_BODY, response_class=JSONResponse)
async def store_study_instances(request: Request, settings: SettingsDep, store: StoreDep, images: ImagesDep,
                                dispatcher: DispatcherDep, owner: OwnerDep,
                                study_uid: Annotated[str, _STUDY_UID]) -> JSONResponse:
    """Store instances of one study; an instance of another study fails (FailureReason 0xA900)."""
    return await _store(request, settings, store, images, dispatcher, owner, study_uid=study_uid)


async def _store(request: Request, settings: SettingsDep, store: StoreDep, images: ImagesDep,
                 dispatcher: DispatcherDep, owner: str, *, study_uid: str | None) -> JSONResponse:
    body = await read_stow_body(request.stream(), request.headers.get("content-type", ""),
                                max_bytes=settings.max_upload_bytes, max_instances=settings.max_files_per_request,
                                study_uid=study_uid)
    batches: dict[str, Batch] = {}
    refusal: ProblemError | None = None
    try:
        for study, plan in body.studies().items():
            reports = reports_asked(await run_in_threadpool(body.header_of, study), dicom_to=settings.dicom_results_to,
                                    stow_url=settings.dicom_results_stow_url)
            try:
                batches[study], _ = await submit_batch(
                    store, images, dispatcher, plan, owner=owner, max_queue=settings.max_queue,
                    lane=choose_lane(len(plan.images), priority=None, interactive_max=settings.interactive_max_images),
                    chunk_size=_chunk_size(plan, settings.max_batch), reports=reports,
                    explain=reports is not None and settings.dicom_explain)
            except ProblemError as refused:
                if refused.status not in (429, 503):
                    raise
                # The queue or a store is full or away: this study's instances fail as out of resources (the
                # sender retries them later); the studies admitted before stay admitted.
                refusal = refusal or refused
                _fail_study(body, study, FailureReason.OUT_OF_RESOURCES)
    finally:
        body.close()
    return _response(body, batches, refusal)


def _chunk_size(plan: UploadPlan, max_batch: int) -> int:
    largest = max(image.size for image in plan.images)
    return max(1, min(max_batch, CHUNK_BYTES // max(largest, 1)))


def _fail_study(body: StowBody, study: str, reason: FailureReason) -> None:
    for instance in body.instances:
        if instance.failure is None and instance.identity is not None and instance.identity.study_uid == study:
            instance.failure = reason


def _response(body: StowBody, batches: dict[str, Batch], refusal: ProblemError | None) -> JSONResponse:
    stored = [instance for instance in body.instances if instance.failure is None]
    failed = [instance for instance in body.instances if instance.failure is not None]
    if not stored and refusal is not None:
        raise refusal  # nothing stored, for want of room: the problem and its Retry-After say when to retry
    answer: dict[str, object] = {}
    if stored:
        answer["00081199"] = {"vr": "SQ", "Value": referenced(iter(stored))}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": referenced(iter(failed))}
        log.info("STOW-RS: %d of %d instances failed: %s", len(failed), len(body.instances),
                 sorted({_reason_name(instance) for instance in failed}))
    if batches:
        answer["00090010"] = {"vr": "LO", "Value": [PRIVATE_CREATOR]}
        answer["00091010"] = {"vr": "LO", "Value": [batch.id for batch in batches.values()]}
    headers = {"Link": ", ".join(f'</batches/{batch.id}>; rel="related"' for batch in batches.values())}
    if len(batches) == 1:
        headers["Location"] = f"/batches/{next(iter(batches.values())).id}"
    status = 409 if not stored else 202 if failed else 200
    return JSONResponse(answer, status_code=status, media_type=DICOM_JSON,
                        headers={name: value for name, value in headers.items() if value})


def _reason_name(instance: Instance) -> str:
    return instance.failure.name if instance.failure is not None else ""
