"""The FastAPI application: routes, error handlers and the connections they share. Never imports TensorFlow."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from api.batcher import EnqueueBatcher
from api.dispatch import Dispatcher
from api.docs import install_docs
from api.limits import BodySizeLimit
from api.notice import NoticeHeader
from api.problems import document_problems, install_problem_handlers
from api.routes import batches, dicomweb, health, jobs, page, predict
from api.sweeper import sweep_periodically
from service.connections import connect_async
from service.deliveries import first_attempt_sender
from service.fairshare import FairShare
from service.images import images_for
from service.jobstore import JobStore, Lane
from service.logs import configure_logging
from service.metrics import ReadinessCollector, StoreCollector
from service.queue import make_celery, send_classify_task
from service.reconciler import Reconciler
from service.settings import Settings, get_settings
from service.workers import WorkerRegistry


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(level=settings.log_level, json_lines=settings.log_format == "json")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Tasks go to the broker of these settings, which may not be the environment's.
        celery = make_celery(settings)
        app.state.store = JobStore(settings.redis_url, ttl=settings.job_ttl, budget_bytes=settings.redis_budget_bytes,
                                   on_delivery_due=first_attempt_sender(celery))
        app.state.images = images_for(settings, app.state.store)
        app.state.workers = WorkerRegistry(settings.redis_url)
        app.state.metrics = CollectorRegistry(auto_describe=False)
        app.state.fair_share = FairShare(settings.redis_url, ttl=settings.job_ttl)
        app.state.metrics.register(ReadinessCollector(app.state.store, app.state.workers))
        app.state.metrics.register(StoreCollector(app.state.store, app.state.workers, app.state.fair_share))
        app.state.async_redis = connect_async(settings.redis_url)
        batcher = EnqueueBatcher(partial(send_classify_task, app=celery, lane=Lane.INTERACTIVE),
                                 max_batch=settings.max_batch, wait_seconds=settings.batch_wait_ms / 1000)
        app.state.dispatcher = Dispatcher(
            batcher=batcher, fair_share=app.state.fair_share, workers=app.state.workers, celery=celery,
            bulk_chunk=settings.bulk_chunk)
        reconciler = Reconciler(url=settings.redis_url, store=app.state.store, images=app.state.images,
                                workers=app.state.workers, fair_share=app.state.fair_share, celery=celery,
                                max_batch=settings.max_batch, bulk_chunk=settings.bulk_chunk,
                                sweep_interval=settings.sweep_interval)
        sweeper = asyncio.create_task(sweep_periodically(reconciler, interval=settings.sweep_interval))
        batcher.start()
        yield
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await batcher.stop()
        reconciler.close()
        celery.close()
        await app.state.async_redis.aclose()
        app.state.fair_share.close()
        app.state.workers.close()
        app.state.images.close()
        app.state.store.close()

    app = FastAPI(
        title="PNEURADNET",
        summary="Chest radiograph classification, submit-then-poll. Decision support, not a diagnosis.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from install_docs, without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(NoticeHeader)
    install_problem_handlers(app)
    document_problems(app)
    install_docs(app)
    for module in (jobs, batches, dicomweb, predict, health, page):
        app.include_router(module.router)
    return app


app = create_app()
