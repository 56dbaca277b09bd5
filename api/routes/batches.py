import logging
from functools import lru_cache
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api.auth import OwnerDep
from api.deps import AsyncRedisDep, SettingsDep, StoreDep
from api.problems import ProblemError, problem_responses
from api.routes.jobs import MAX_WAIT, POLL_AFTER
from api.schemas import BatchPublic, CallbackPublic, CancelResult, JobPublic
from api.submission import wait_for_batch
from pneuradnet.csvfile import ResultTable, csv_text, labels_of
from pneuradnet.errors import ModelManifestError
from pneuradnet.manifest import load_manifest
from service.jobstore import Batch, Job, JobStore
from service.logs import job_event

log = logging.getLogger(__name__)
router = APIRouter(tags=["batches"])

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@router.get("/batches/{batch_id}", response_model=BatchPublic,
            responses={200: {"content": {"text/csv": {}}, "description": "The batch, or its CSV export"},
                       **problem_responses(401, 404, 422, 503)})
async def get_batch(
    batch_id: UUID,
    response: Response,
    store: StoreDep,
    redis: AsyncRedisDep,
    owner: OwnerDep,
    settings: SettingsDep,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    page_token: Annotated[str | None, Query(pattern=r"^\d{1,9}$", description="From the previous page")] = None,
    format: Annotated[Literal["json", "csv"], Query(description="csv: one row per image, every job")] = "json",
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT, description="Seconds to wait for every job to finish")] = 0,
) -> BatchPublic | Response:
    batch = await owned_batch(store, str(batch_id), owner)
    if wait and not batch.done:
        batch = await wait_for_batch(store, redis, batch.id, timeout=wait) or batch
    if format == "csv":
        jobs = await run_in_threadpool(_jobs_of, store, batch.id, 0, -1)
        return Response(_to_csv(jobs, model_labels(settings.model_manifest)), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="batch-{batch.id}.csv"'})
    if not batch.done:
        response.headers["Retry-After"] = str(POLL_AFTER)
    return await run_in_threadpool(_page, store, batch, int(page_token or 0), page_size)


@router.delete("/batches/{batch_id}", response_model=CancelResult,
               responses=problem_responses(401, 404, 422, 503))
async def cancel_batch(batch_id: UUID, store: StoreDep, owner: OwnerDep) -> CancelResult:
    """Cancel every job of the batch that has not started; running and finished jobs are left as they are."""
    batch = await owned_batch(store, str(batch_id), owner)
    canceled = await run_in_threadpool(store.cancel_batch, batch.id)
    for job_id in canceled:
        job_event(log, "canceled", job_id, batch_id=batch.id, status="canceled")
    return CancelResult(batch_id=batch.id, canceled=len(canceled))


async def owned_batch(store: JobStore, batch_id: str, owner: str) -> Batch:
    batch = await run_in_threadpool(store.get_batch, batch_id)
    if batch is None or batch.owner != owner:
        raise ProblemError(404, "batch-not-found", f"there is no batch {batch_id} (or it has expired)")
    return batch


def _page(store: JobStore, batch: Batch, offset: int, page_size: int) -> BatchPublic:
    jobs = _jobs_of(store, batch.id, offset, offset + page_size - 1)
    following = offset + page_size
    return BatchPublic(id=batch.id, created_at=batch.created_at, total=batch.total, lane=batch.lane,
                       counts=batch.counts, callback=CallbackPublic.of(batch.callback) if batch.callback else None,
                       reports={channel.value: CallbackPublic.of(status) for channel, status in batch.reports.items()}
                       if batch.reports else None,
                       jobs=[JobPublic.of(job) for job in jobs],
                       next_page_token=str(following) if following < batch.total else None)


def _jobs_of(store: JobStore, batch_id: str, start: int, stop: int) -> list[Job]:
    return store.get_jobs(store.batch_job_ids(batch_id, start=start, stop=stop))


@lru_cache
def model_labels(manifest: str) -> tuple[str, ...]:
    """The labels of the model the service is configured for, read once from its manifest (JSON only: the model
    file is neither located nor read). Empty if it cannot be read: the CSV then has the labels of its results."""
    try:
        return tuple(load_manifest(manifest).labels)
    except ModelManifestError as error:
        log.warning("the CSV export takes its label columns from the results only: %s", error)
        return ()


def _to_csv(jobs: list[Job], labels: tuple[str, ...]) -> str:
    """One row per job; a probability column per label of the model, even when no job has a result."""
    table = ResultTable(labels_of((job.result for job in jobs), labels))
    return csv_text([table.header(), *(
        table.row(job.filename, job.result, status=job.status.value, error=job.error["detail"] if job.error else "",
                  job_id=job.id)
        for job in jobs)])
