"""POST /jobs: images and ZIP archives become stored jobs, enqueued in tasks of MAX_BATCH; bad uploads are
refused whole, with nothing stored or enqueued."""

import os
import zipfile

import httpx
from redis import Redis

from service.jobstore import JobStatus, JobStore
from tests.api.routes.support import (
    ROUTE_SETTINGS,
    Serve,
    assert_problem,
    enqueued_job_ids,
    enqueued_tasks,
    images,
    png,
    stored_keys,
    zip_of,
)

MAX_BATCH = ROUTE_SETTINGS["max_batch"]


def assert_nothing_kept(redis: Redis, store: JobStore) -> None:
    assert stored_keys(redis) == []
    assert store.queued_count() == 0
    assert enqueued_tasks(redis) == []


async def test_one_image_is_stored_as_a_queued_job_and_enqueued(api: httpx.AsyncClient, redis_db: Redis,
                                                                 store: JobStore):
    image = png()

    answer = await api.post("/jobs", files={"files": ("chest.png", image, "image/png")})

    assert answer.status_code == 202
    body = answer.json()
    assert answer.headers["location"] == f"/batches/{body['batch_id']}"
    (job,) = body["jobs"]
    assert job["status"] == "queued" and job["filename"] == "chest.png" and job["batch_id"] == body["batch_id"]
    assert enqueued_tasks(redis_db) == [[job["id"]]]
    assert store.images([job["id"]]) == [image]
    assert store.get_job(job["id"]).status is JobStatus.QUEUED


async def test_several_images_keep_their_order_and_go_in_tasks_of_max_batch(api: httpx.AsyncClient,
                                                                            redis_db: Redis):
    names = [f"chest-{n}.png" for n in range(2 * MAX_BATCH + 1)]

    answer = await api.post("/jobs", files=images(*names))

    assert answer.status_code == 202
    jobs = answer.json()["jobs"]
    assert [job["filename"] for job in jobs] == names
    tasks = enqueued_tasks(redis_db)
    assert [len(task) for task in tasks] == [MAX_BATCH, MAX_BATCH, 1]
    assert [job_id for task in tasks for job_id in task] == [job["id"] for job in jobs]


async def test_a_zip_with_folders_gives_a_job_per_image_named_by_its_cleaned_path(api: httpx.AsyncClient,
                                                                                 redis_db: Redis, store: JobStore):
    archive = zip_of({
        "study/a.png": png(1),
        "study/left/b.png": png(2),
        "../../escaped.png": png(3),       # a traversal name is only a label here: its `..` are dropped
        "study/./right/../c.png": png(4),
        "study\\windows\\d.png": png(5),   # written on Windows
    })
    files = [("files", ("first.png", png(0), "image/png")), ("files", ("study.zip", archive, "application/zip")),
             ("files", ("last.png", png(6), "image/png"))]

    answer = await api.post("/jobs", files=files)

    assert answer.status_code == 202
    jobs = answer.json()["jobs"]
    assert [job["filename"] for job in jobs] == [
        "first.png", "study/a.png", "study/left/b.png", "escaped.png", "study/right/c.png", "study/windows/d.png",
        "last.png"]
    assert store.images([job["id"] for job in jobs]) == [png(shade) for shade in range(7)]
    assert enqueued_job_ids(redis_db) == [job["id"] for job in jobs]


async def test_hidden_members_and_folders_of_a_zip_are_skipped(api: httpx.AsyncClient, redis_db: Redis):
    archive = zip_of({
        "study/": b"",
        "study/a.png": png(1),
        "study/.DS_Store": b"\0\0\0\1Bud1",
        ".hidden/b.png": png(2),
        "__MACOSX/study/._a.png": b"\0\5\26\7",
    })

    answer = await api.post("/jobs", files={"files": ("study.zip", archive, "application/zip")})

    assert answer.status_code == 202
    (job,) = answer.json()["jobs"]
    assert job["filename"] == "study/a.png"
    assert enqueued_job_ids(redis_db) == [job["id"]]


async def test_a_bad_zip_is_refused_with_nothing_stored_or_enqueued(api: httpx.AsyncClient, redis_db: Redis,
                                                                    store: JobStore):
    broken = zip_of({"a.png": png(1), "b.png": png(2)})[:60]  # the local header survives, the directory is cut
    files = [("files", ("fine.png", png(), "image/png")), ("files", ("broken.zip", broken, "application/zip"))]

    answer = await api.post("/jobs", files=files)

    body = assert_problem(answer, 422, "invalid-zip")
    assert "broken.zip" in body["detail"]
    assert_nothing_kept(redis_db, store)


async def test_a_zip_bomb_is_refused_with_nothing_stored_or_enqueued(api: httpx.AsyncClient, redis_db: Redis,
                                                                     store: JobStore):
    bomb = zip_of({"a.png": png(1), "huge.png": b"\0" * (1024 * 1024)}, compression=zipfile.ZIP_DEFLATED)
    assert len(bomb) < 1024 * 1024 // 200  # it does expand more than 200-fold

    answer = await api.post("/jobs", files={"files": ("bomb.zip", bomb, "application/zip")})

    body = assert_problem(answer, 422, "zip-bomb")
    assert "huge.png" in body["detail"]
    assert_nothing_kept(redis_db, store)


async def test_more_images_than_allowed_are_refused_whole(serve: Serve, redis_db: Redis, store: JobStore):
    api = await serve(max_files_per_request=3)

    loose = await api.post("/jobs", files=images("a.png", "b.png", "c.png", "d.png"))
    zipped = await api.post("/jobs", files=[
        ("files", ("a.png", png(), "image/png")),
        ("files", ("study.zip", zip_of({"b.png": png(1), "c.png": png(2), "d.png": png(3)}), "application/zip"))])

    assert_problem(loose, 413, "too-many-files")
    assert_problem(zipped, 413, "too-many-files")
    assert_nothing_kept(redis_db, store)
    assert (await api.post("/jobs", files=images("a.png", "b.png", "c.png"))).status_code == 202


async def test_the_file_field_of_old_clients_is_accepted(api: httpx.AsyncClient, redis_db: Redis):
    answer = await api.post("/jobs", files={"file": ("chest.png", png(), "image/png")})

    assert answer.status_code == 202
    (job,) = answer.json()["jobs"]
    assert job["filename"] == "chest.png"
    assert enqueued_job_ids(redis_db) == [job["id"]]


async def test_a_request_without_images_is_refused(api: httpx.AsyncClient, redis_db: Redis, store: JobStore):
    form_without_files = await api.post("/jobs", files={"note": (None, "no images here")})
    empty = await api.post("/jobs")

    assert_problem(form_without_files, 422, "no-files")
    assert_problem(empty, 422, "no-files")
    assert_nothing_kept(redis_db, store)


async def test_files_of_several_mib_arrive_byte_for_byte(api: httpx.AsyncClient, store: JobStore):
    loose = png() + os.urandom(3 * 2**20)  # a PNG's bytes and then noise: only the stored bytes are compared
    members = {f"{n}.png": png(n) + os.urandom(2**20 + n) for n in range(3)}

    answer = await api.post("/jobs", files=[("files", ("big.png", loose, "image/png")),
                                            ("files", ("study.zip", zip_of(members), "application/zip"))])

    assert answer.status_code == 202, answer.text
    assert store.images([job["id"] for job in answer.json()["jobs"]]) == [loose, *members.values()]
