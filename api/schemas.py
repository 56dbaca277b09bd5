"""What the API answers: one public schema per resource, separate from how the job store keeps it."""

from datetime import UTC, datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict

from service.jobstore import Job, JobStatus, Lane
from service.notice import DISCLAIMER
from service.webhooks import CallbackState, CallbackStatus


class ModelRef(BaseModel):
    name: str
    version: str


class ImageSource(BaseModel):
    """Non-identifying facts about an uploaded DICOM file (pneuradnet.dicom.FACTS); nothing about the patient."""

    format: str
    modality: str | None = None
    view_position: str | None = None
    rows: int | None = None
    columns: int | None = None
    frames: int | None = None
    frame_used: int | None = None
    """Which frame was classified, from 1; a multi-frame file is classified on its first."""
    photometric_interpretation: str | None = None
    bits_stored: int | None = None


class JobResult(BaseModel):
    labels: list[str]
    predictions: list[float]
    """Probabilities in label order."""
    predicted_class: str
    confidence: float
    model: ModelRef
    runtime: str
    timings_ms: dict[str, float]
    source: ImageSource | None = None
    """Facts about the file, for DICOM uploads; null for PNG and JPEG."""
    heatmap_url: str | None = None
    """For a job submitted with explain: where its Grad-CAM heatmap over the image is (a PNG); null otherwise, or
    if the explanation failed."""
    explanation_error: str | None = None
    """Why a job submitted with explain has no heatmap; its prediction stands."""


class ProblemDetails(BaseModel):
    """RFC 9457 problem details, as a failed job carries them in `error`; some add members (e.g. `errors`)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str


class Problem(ProblemDetails):
    """An error answer (4xx, 5xx): problem details plus `error`."""

    error: str
    """The same text as `detail`, for clients of the original service, which answered `{"error": "<reason>"}`."""


class JobPublic(BaseModel):
    id: str
    batch_id: str
    status: JobStatus
    filename: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    result: JobResult | None
    error: ProblemDetails | None
    explain: bool = False
    """Submitted with explain=true: a succeeded job has a Grad-CAM heatmap at result.heatmap_url."""

    @classmethod
    def of(cls, job: Job) -> Self:
        result = job.result
        if result is not None and result.get("heatmap"):
            result = {**result, "heatmap_url": heatmap_path(job.id)}
        return cls(id=job.id, batch_id=job.batch_id, status=job.status, filename=job.filename,
                   created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
                   result=result, error=job.error, explain=job.explain)


class JobAnswer(JobPublic):
    """One job, answered on its own (in a batch's list, the batch carries the notice)."""

    notice: str = DISCLAIMER


def heatmap_path(job_id: str) -> str:
    """The route of GET /jobs/{id}/heatmap.png (api/routes/jobs.py)."""
    return f"/jobs/{job_id}/heatmap.png"


class SubmitResponse(BaseModel):
    batch_id: str
    lane: Lane
    """interactive: served before bulk work; bulk: shared fairly between API keys."""
    jobs: list[JobPublic]
    notice: str = DISCLAIMER


class CallbackPublic(BaseModel):
    """The batch's callback (callback_url): pending until the batch finishes and while a retry waits; delivering
    during an attempt; delivered once the receiver answered 2xx; failed when given up."""

    state: CallbackState
    attempts: int
    delivery_id: str | None
    """Sent as X-Pneuradnet-Delivery, the same on every attempt; null until the batch has finished."""
    last_status: int | None
    """The receiver's HTTP status at the last attempt it answered."""
    last_error: str | None
    """Why the last attempt had no answer (refused, timed out), or why the delivery was given up."""
    next_attempt_at: str | None
    """When a pending retry is due."""

    @classmethod
    def of(cls, status: CallbackStatus) -> Self:
        at = status.next_attempt_at
        return cls(state=status.state, attempts=status.attempts, delivery_id=status.delivery_id,
                   last_status=status.last_status, last_error=status.last_error,
                   next_attempt_at=datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds") if at else None)


class BatchPublic(BaseModel):
    id: str
    created_at: str
    total: int
    lane: Lane
    counts: dict[JobStatus, int]
    jobs: list[JobPublic]
    next_page_token: str | None
    callback: CallbackPublic | None = None
    """Only for a batch submitted with callback_url."""
    reports: dict[str, CallbackPublic] | None = None
    """Only for a batch of a DICOM study with reports: the delivery of its structured report to each destination
    (`report_dicom`: C-STORE to DICOM_RESULTS_TO; `report_stow`: STOW-RS to DICOM_RESULTS_STOW_URL); `skipped` when no
    image was classified."""
    notice: str = DISCLAIMER


class CancelResult(BaseModel):
    batch_id: str
    canceled: int
    """Jobs moved from queued to canceled; running and finished jobs are not counted."""


class LegacyPrediction(BaseModel):
    """The original synchronous service's answer, plus the model and the job it ran as."""

    filename: str
    predictions: list[list[float]]
    predicted_class: str
    confidence: float
    model: ModelRef
    job_id: str
    notice: str = DISCLAIMER

    @classmethod
    def of(cls, job: Job) -> "LegacyPrediction":
        result: dict[str, Any] = job.result or {}
        return cls(filename=job.filename, predictions=[result["predictions"]],
                   predicted_class=result["predicted_class"], confidence=result["confidence"],
                   model=result["model"], job_id=job.id)
