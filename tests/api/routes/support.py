"""Helpers of the in-process route tests: images and archives to upload, the tasks the API put on the broker,
and what a problem answer must hold."""

import base64
import io
import json
import zipfile
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import httpx
from PIL import Image
from redis import Redis

from service.keys import fair_pending_key
from service.queue import CLASSIFY_TASK, QUEUES
from tests.live_service import UNCONSUMED_REDIS_URL

PROBLEM_JSON = "application/problem+json"

ROUTE_SETTINGS = {
    "redis_url": UNCONSUMED_REDIS_URL,
    "model_manifest": "default",  # only its labels are read (CSV columns); no model is loaded
    "api_keys": "",
    "max_batch": 4,
    "bulk_chunk": 4,  # a bulk upload is enqueued as it is admitted, 4 jobs at a time
    "batch_wait_ms": 0,  # no window to wait out: each request's jobs are enqueued at once
    "max_files_per_request": 20,
    "max_upload_bytes": 8 * 1024 * 1024,
    "max_queue": 1000,
    "job_ttl": 600,
}
"""The settings these tests depend on, given explicitly so that the environment cannot change what is tested."""

Serve = Callable[..., Awaitable[httpx.AsyncClient]]
"""Starts an API with ROUTE_SETTINGS overridden, e.g. `await serve(max_queue=2)`: a client of it (conftest)."""


def png(shade: int = 0) -> bytes:
    """A small real PNG; each shade gives other bytes, so that uploads can differ in content as well as name."""
    buffer = io.BytesIO()
    Image.new("L", (4, 4), shade).save(buffer, "PNG")
    return buffer.getvalue()


def zip_of(members: dict[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> bytes:
    """A ZIP archive holding these members, named exactly as given (folders, `..` and all)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buffer.getvalue()


def images(*names: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The multipart field `files` with one PNG per name, each of other content."""
    return [("files", (name, png(shade), "image/png")) for shade, name in enumerate(names)]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def queue_tasks(redis: Redis, queue: str) -> list[tuple[list[str], dict[str, str]]]:
    """The classify tasks waiting in one Celery queue, oldest first: each task's job ids and its keyword arguments.

    No worker consumes the test database, so every task the API sent is still in the queue's list, as kombu's
    Redis transport wrote it: a JSON envelope whose base64 body is Celery's [args, kwargs, embed].
    """
    tasks = []
    for raw in reversed(redis.lrange(queue, 0, -1)):  # LPUSHed: the newest is first
        message = json.loads(raw)
        assert message["headers"]["task"] == CLASSIFY_TASK
        assert message["properties"]["body_encoding"] == "base64"
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        (job_ids,) = args
        tasks.append((job_ids, kwargs))
    return tasks


def pending_chunks(redis: Redis) -> list[list[str]]:
    """The job ids of each bulk chunk fair share holds back (past its key's window), key by key, oldest first."""
    return [json.loads(raw)["jobs"] for key in sorted(redis.scan_iter(fair_pending_key("*")))
            for raw in redis.lrange(key, 0, -1)]


def enqueued_tasks(redis: Redis) -> list[list[str]]:
    """The job ids of every task the API has handed over to run: those on the broker (interactive lane first, then
    bulk, oldest first in each) and then the bulk chunks waiting their key's turn in fair share."""
    return [*(job_ids for queue in QUEUES.values() for job_ids, _ in queue_tasks(redis, queue)),
            *pending_chunks(redis)]


def enqueued_job_ids(redis: Redis) -> list[str]:
    return [job_id for task in enqueued_tasks(redis) for job_id in task]


def stored_keys(redis: Redis) -> list[bytes]:
    """Every job and batch key of the job store (records, images, job lists)."""
    return [*redis.scan_iter("pneuradnet:job:*"), *redis.scan_iter("pneuradnet:batch:*")]


def assert_problem(answer: httpx.Response, status: int, kind: str) -> dict:
    """The answer is an RFC 9457 problem of this status and kind with a human detail; its body, for more checks."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM_JSON
    body = answer.json()
    assert body["type"] == f"urn:pneuradnet:problem:{kind}"
    assert body["status"] == status
    assert body["title"] == HTTPStatus(status).phrase
    assert body["detail"]
    return body
