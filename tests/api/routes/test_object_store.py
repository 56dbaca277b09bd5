"""Images in an S3-compatible object store (a real SeaweedFS), in process: uploads written to the bucket as they
are admitted, submissions by reference within IMAGE_SOURCES, and Redis' byte budget; nothing is kept of a request
that is refused."""

import uuid

import httpx
import pytest
from redis import Redis

from service.imagestore import ObjectLocation, ObjectStore
from service.jobstore import JobStatus, JobStore
from service.keys import ADMISSION_BYTES, IMAGES_OWNED
from tests.api.routes.support import Serve, assert_problem, enqueued_job_ids, enqueued_tasks, images, png, zip_of
from tests.objectstore import SeaweedFS
from tests.processes import free_port

BUCKET = "pneuradnet-routes"


@pytest.fixture
def objects(object_store: SeaweedFS) -> ObjectStore:
    return ObjectStore(endpoint=object_store.endpoint)


@pytest.fixture
def folder() -> ObjectLocation:
    """A folder of its own for the test, in the bucket the service is pointed at."""
    return ObjectLocation(BUCKET, f"test-{uuid.uuid4().hex}")


@pytest.fixture
async def bucket_api(serve: Serve, object_store: SeaweedFS, folder: ObjectLocation) -> httpx.AsyncClient:
    """An API that writes uploads to the bucket and may read references in the test's folder."""
    return await serve(image_store=str(folder), image_sources=f"{folder}/",
                       aws_endpoint_url=object_store.endpoint)


def assert_nothing_kept(redis: Redis, store: JobStore) -> None:
    assert list(redis.scan_iter("pneuradnet:job:*")) == []
    assert list(redis.scan_iter("pneuradnet:batch:*")) == []
    assert store.queued_count() == 0 and enqueued_tasks(redis) == []
    assert redis.hlen(ADMISSION_BYTES) == 0


async def test_uploads_go_to_the_bucket_and_redis_keeps_only_their_records(
        bucket_api: httpx.AsyncClient, redis_db: Redis, store: JobStore, objects: ObjectStore,
        folder: ObjectLocation):
    members = {f"study/{n}.png": png(n) for n in range(6)}

    answer = await bucket_api.post("/jobs", files={"files": ("study.zip", zip_of(members), "application/zip")})

    assert answer.status_code == 202, answer.text
    batch_id = answer.json()["batch_id"]
    jobs = store.get_jobs([job["id"] for job in answer.json()["jobs"]])
    assert [job.image for job in jobs] == [f"{folder}/{batch_id}/{n:06d}" for n in range(6)]
    assert all(job.image_owned for job in jobs)
    assert objects.get_many([ObjectLocation.parse(job.image) for job in jobs]) == list(members.values())
    assert list(redis_db.scan_iter("pneuradnet:job:*:image")) == []  # no image byte in Redis
    assert enqueued_job_ids(redis_db) == [job.id for job in jobs]
    # Noted for deletion when their jobs finish, or JOB_TTL from now at the latest.
    assert redis_db.zcard(IMAGES_OWNED) == 6 and store.owned_images_due(limit=10) == []


async def test_images_named_by_reference_become_jobs_without_an_upload_and_are_never_owned(
        bucket_api: httpx.AsyncClient, redis_db: Redis, store: JobStore, objects: ObjectStore,
        folder: ObjectLocation):
    named = [folder.child(f"ward-7/{n}.png") for n in range(3)]
    objects.put_many([(location, png(n)) for n, location in enumerate(named)])

    answer = await bucket_api.post("/jobs", json={"images": [str(location) for location in named]})

    assert answer.status_code == 202, answer.text
    jobs = store.get_jobs([job["id"] for job in answer.json()["jobs"]])
    assert [job.filename for job in jobs] == [location.key for location in named]
    assert [job.image for job in jobs] == [str(location) for location in named]
    assert not any(job.image_owned for job in jobs) and redis_db.zcard(IMAGES_OWNED) == 0
    assert answer.json()["lane"] == "interactive" and enqueued_job_ids(redis_db) == [job.id for job in jobs]


async def test_a_prefix_submits_every_object_under_it_named_by_its_path_there(
        bucket_api: httpx.AsyncClient, store: JobStore, objects: ObjectStore, folder: ObjectLocation):
    under = [folder.child(f"archive/2026/{n:02d}.png") for n in range(7)]
    objects.put_many([(location, png(n)) for n, location in enumerate(under)] + [(folder.child("other.png"), png())])

    answer = await bucket_api.post("/jobs", json={"prefix": str(folder.child("archive/"))})

    assert answer.status_code == 202, answer.text
    assert [job["filename"] for job in answer.json()["jobs"]] == [f"2026/{n:02d}.png" for n in range(7)]
    assert answer.json()["lane"] == "bulk"


async def test_a_reference_outside_the_sources_is_refused_and_nothing_is_stored(
        bucket_api: httpx.AsyncClient, redis_db: Redis, store: JobStore, folder: ObjectLocation):
    inside = str(folder.child("a.png"))
    for body in ({"images": [inside, "s3://someone-elses/a.png"]}, {"prefix": "s3://someone-elses/"},
                 {"images": [f"s3://{BUCKET}/{folder.key}-sibling/a.png"]}):
        answer = await bucket_api.post("/jobs", json=body)
        assert "IMAGE_SOURCES" in assert_problem(answer, 422, "reference-not-allowed")["detail"]
    assert_nothing_kept(redis_db, store)


async def test_a_malformed_reference_body_is_a_422_problem_naming_what_is_wrong(
        bucket_api: httpx.AsyncClient, redis_db: Redis, store: JobStore):
    cases = {b'{"images": []}': "images", b'{"images": ["s3://a/b"], "prefix": "s3://a/"}': "either",
             b'{"folder": "s3://a/"}': "folder", b"not json": "json", b'{"images": ["/etc/passwd"]}': "/etc/passwd"}
    for body, named in cases.items():
        answer = await bucket_api.post("/jobs", content=body, headers={"Content-Type": "application/json"})
        assert named in assert_problem(answer, 422, answer.json()["type"].rsplit(":", 1)[1])["detail"].lower()
    assert_nothing_kept(redis_db, store)


async def test_a_prefix_with_more_objects_than_max_references_is_refused(
        serve: Serve, object_store: SeaweedFS, redis_db: Redis, store: JobStore, objects: ObjectStore,
        folder: ObjectLocation):
    api = await serve(image_sources=f"{folder}/", max_references=5, aws_endpoint_url=object_store.endpoint)
    objects.put_many([(folder.child(f"{n}.png"), png(n)) for n in range(6)])

    answer = await api.post("/jobs", json={"prefix": f"{folder}/"})

    assert "MAX_REFERENCES" in assert_problem(answer, 413, "too-many-files")["detail"]
    assert_nothing_kept(redis_db, store)


async def test_references_are_refused_by_a_service_without_sources(api: httpx.AsyncClient, redis_db: Redis,
                                                                   store: JobStore):
    answer = await api.post("/jobs", json={"images": ["s3://archive/a.png"]})

    assert "IMAGE_SOURCES" in assert_problem(answer, 422, "references-disabled")["detail"]
    assert_nothing_kept(redis_db, store)


async def test_an_object_store_that_does_not_answer_is_a_503_and_nothing_is_kept(
        serve: Serve, redis_db: Redis, store: JobStore, monkeypatch: pytest.MonkeyPatch):
    nowhere = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", nowhere)
    api = await serve(image_store=f"s3://{BUCKET}/down", image_sources=f"s3://{BUCKET}/",
                      aws_endpoint_url=nowhere)
    headers = {"Idempotency-Key": "upload-1"}

    upload = await api.post("/jobs", files=images("a.png", "b.png"), headers=headers)
    listing = await api.post("/jobs", json={"prefix": f"s3://{BUCKET}/"})

    for answer in (upload, listing):
        assert_problem(answer, 503, "image-store-unavailable")
        assert answer.headers["retry-after"] == "5"
    assert list(redis_db.scan_iter("pneuradnet:job:*")) == []
    assert store.queued_count() == 0 and enqueued_tasks(redis_db) == [] and redis_db.hlen(ADMISSION_BYTES) == 0
    assert redis_db.get("pneuradnet:idempotency::upload-1") is None  # freed for the retry


async def test_a_request_that_would_pass_redis_budget_is_refused_whole(serve: Serve, redis_db: Redis,
                                                                      store: JobStore):
    used = int(redis_db.info("memory")["used_memory"])
    api = await serve(redis_budget_bytes=used + 200_000)  # room for about 100 waiting jobs, or one large image
    small = await api.post("/jobs", files=images("a.png", "b.png"))
    assert small.status_code == 202

    large = await api.post("/jobs", files=[("files", ("large.png", b"\x89PNG" + bytes(400_000), "image/png"))])

    body = assert_problem(large, 429, "store-full")
    assert large.headers["retry-after"] == "30" and "budget" in body["detail"]
    assert store.queued_count() == 2 and redis_db.hlen(ADMISSION_BYTES) == 0
    assert len(list(redis_db.scan_iter("pneuradnet:batch:*:jobs"))) == 1  # the first batch only
    assert [job.status for job in store.get_jobs(enqueued_job_ids(redis_db))] == [JobStatus.QUEUED] * 2

