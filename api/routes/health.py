from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool

from api.auth import OwnerDep
from api.deps import StoreDep, WorkersDep
from api.problems import REDIS_RETRY_AFTER, problem_response, problem_responses
from api.schemas import DISCLAIMER
from service.jobstore import JobStore
from service.workers import WorkerRegistry

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (it says nothing of Redis or the workers)."""
    return {"status": "ok"}


@router.get("/readyz", responses=problem_responses(503))
async def readyz(store: StoreDep, workers: WorkersDep) -> JSONResponse:
    """Ready when Redis answers and at least one worker process has loaded its model; says how much of its byte
    budget Redis uses (a submission that would pass it is refused: 429 store-full)."""
    try:
        live = await run_in_threadpool(_live_workers, store, workers)
        used, budget = await run_in_threadpool(store.memory)
    except Exception:
        return problem_response(503, "not-ready", "the job store (Redis) does not answer",
                                {"Retry-After": str(REDIS_RETRY_AFTER)})
    redis = {"used_bytes": used, "budget_bytes": budget}
    if not live:
        return problem_response(503, "not-ready", "no worker is alive with a loaded model: jobs would wait",
                                {"Retry-After": str(REDIS_RETRY_AFTER)}, redis=redis)
    return JSONResponse({"status": "ready", "workers": len(live), "redis": redis})


@router.get("/models", responses=problem_responses(401, 503))
async def models(workers: WorkersDep, _: OwnerDep) -> dict[str, Any]:
    """The models the live workers serve, one entry per model file, with how many processes serve it."""
    served: dict[tuple[str, str], dict[str, Any]] = {}
    for worker in await run_in_threadpool(workers.live):
        entry = served.setdefault((worker["model_name"], worker["sha256"]), {
            "name": worker["model_name"], "version": worker["model_version"], "sha256": worker["sha256"],
            "labels": worker["labels"].split(","), "runtime": worker["runtime"], "workers": 0})
        entry["workers"] += 1
    return {"models": list(served.values()), "notice": DISCLAIMER}


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **problem_responses(503)})
async def metrics(request: Request) -> Response:
    """Prometheus metrics of the whole service: every worker's work, read from Redis at scrape time."""
    registry: CollectorRegistry = request.app.state.metrics
    return Response(await run_in_threadpool(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)


def _live_workers(store: JobStore, workers: WorkerRegistry) -> list[dict[str, str]]:
    store.ping()
    return workers.live()
