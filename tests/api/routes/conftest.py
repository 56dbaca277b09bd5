"""The API in this test process: the real FastAPI app and its lifespan, driven over ASGI, on a real Redis.

No model and no worker: nothing consumes the test database, so the tasks the API enqueues stay on the broker,
where the tests read them (support.enqueued_tasks).
"""

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack

import httpx
import pytest
from redis import Redis

from api.main import create_app
from service.jobstore import JobStore
from service.settings import Settings
from tests.api.routes.support import ROUTE_SETTINGS, Serve
from tests.live_service import UNCONSUMED_REDIS_URL, empty_database


@pytest.fixture
def redis_db() -> Iterator[Redis]:
    """The test database, empty before and after the test: job store and broker queue alike."""
    with empty_database(UNCONSUMED_REDIS_URL, decode=False) as redis:
        yield redis


@pytest.fixture
def store(redis_db: Redis) -> Iterator[JobStore]:
    """The job store the API uses, for what a worker would do (start, succeed) and for checking what was kept."""
    job_store = JobStore(UNCONSUMED_REDIS_URL, ttl=ROUTE_SETTINGS["job_ttl"])
    yield job_store
    job_store.close()


@pytest.fixture
async def serve(redis_db: Redis) -> AsyncIterator[Serve]:
    """Start an API with settings overridden (`await serve(max_queue=2)`); a client of it, with its lifespan run.

    ASGITransport does not run the lifespan (store, Redis connections, enqueue batcher), so it is entered here,
    and left when the test ends.
    """
    async with AsyncExitStack() as stack:
        async def start(**overrides: object) -> httpx.AsyncClient:
            app = create_app(Settings(**(ROUTE_SETTINGS | overrides)))
            await stack.enter_async_context(app.router.lifespan_context(app))
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test"))

        yield start


@pytest.fixture
async def api(serve: Serve) -> httpx.AsyncClient:
    """A client of the API with the route-test settings (ROUTE_SETTINGS)."""
    return await serve()
