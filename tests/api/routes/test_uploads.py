"""POST /jobs: images and ZIP archives become stored jobs, enqueued in tasks of MAX_BATCH; bad uploads are
refused whole, with nothing stored or enqueued."""

import io
import os
import struct
import zipfile

import httpx
import pytest
from redis import Redis

from api.uploads import ZIP_DIRECTORY_BYTES_PER_ENTRY, ZIP_ENTRIES_PER_IMAGE, ZIP_EXTRA_ENTRIES
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
MAX_FILES = ROUTE_SETTINGS["max_files_per_request"]
ENTRIES_ALLOWED = ZIP_ENTRIES_PER_IMAGE * MAX_FILES + ZIP_EXTRA_ENTRIES
"""Entries a ZIP alone in a request may list."""


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


async def test_a_zip_listing_far_more_entries_than_allowed_is_refused_from_its_end_record(
        serve: Serve, redis_db: Redis, store: JobStore, monkeypatch: pytest.MonkeyPatch):
    # The case, smaller: zipfile took 46 s and 2.3 GB to build the directory of 2,000,000 empty entries.
    many = zip_of({f"{n}.png": b"" for n in range(100_000)})
    api = await serve(max_upload_bytes=len(many) + 2**20)
    directories_built = []
    build_directory = zipfile.ZipFile

    def zip_file(*args, **kwargs):
        directories_built.append(args)
        return build_directory(*args, **kwargs)

    monkeypatch.setattr(zipfile, "ZipFile", zip_file)

    answer = await api.post("/jobs", files={"files": ("many.zip", many, "application/zip")})

    body = assert_problem(answer, 413, "too-many-files")
    assert body["detail"] == (f"many.zip lists 100,000 entries (files and folders), more than the {ENTRIES_ALLOWED} "
                              f"entries allowed in a request of at most {MAX_FILES} images (MAX_FILES_PER_REQUEST); "
                              "split them into several requests")
    assert directories_built == []
    assert_nothing_kept(redis_db, store)


async def test_the_entries_a_zip_may_list_shrink_with_the_images_sent_before_it(
        api: httpx.AsyncClient, redis_db: Redis, store: JobStore):
    loose = MAX_FILES // 2
    folders = {f"scans/{n}/": b"" for n in range(ENTRIES_ALLOWED - 1)}  # with one image: as many entries as allowed
    archive = zip_of({**folders, "scans/a.png": png()})

    beside_images = await api.post("/jobs", files=[*images(*(f"{n}.png" for n in range(loose))),
                                                   ("files", ("scans.zip", archive, "application/zip"))])
    alone = await api.post("/jobs", files={"files": ("scans.zip", archive, "application/zip")})

    body = assert_problem(beside_images, 413, "too-many-files")
    assert f"more than the {ENTRIES_ALLOWED - ZIP_ENTRIES_PER_IMAGE * loose} entries allowed" in body["detail"]
    assert alone.status_code == 202, alone.text
    assert [job["filename"] for job in alone.json()["jobs"]] == ["scans/a.png"]
    assert len(enqueued_job_ids(redis_db)) == 1


async def test_a_zip_from_a_mac_with_as_many_images_as_allowed_is_accepted(serve: Serve, redis_db: Redis):
    # Finder's "Compress" adds a folder entry per folder and an AppleDouble file (`__MACOSX/.../._name`) per file: at
    # this limit, more entries than one per image and ZIP_EXTRA_ENTRIES.
    max_files = 300
    api = await serve(max_files_per_request=max_files)
    members: dict[str, bytes] = {}
    for folder in ("left", "right"):
        members |= {f"{folder}/": b"", f"{folder}/.DS_Store": b"\0\0\0\1Bud1", f"__MACOSX/{folder}/": b"",
                    f"__MACOSX/{folder}/._.DS_Store": b"\0\5\26\7"}
        for n in range(max_files // 2):
            members |= {f"{folder}/{n}.png": png(n), f"__MACOSX/{folder}/._{n}.png": b"\0\5\26\7"}
    assert len(members) > max_files + ZIP_EXTRA_ENTRIES

    answer = await api.post("/jobs", files={"files": ("study.zip", zip_of(members), "application/zip")})

    assert answer.status_code == 202, answer.text
    assert len(answer.json()["jobs"]) == max_files
    assert len(enqueued_job_ids(redis_db)) == max_files


async def test_a_zip_whose_directory_is_larger_than_its_entries_can_need_is_refused(
        api: httpx.AsyncClient, redis_db: Redis, store: JobStore):
    comment = b"c" * 0xFFFF  # each entry may carry a comment of up to 64 KiB, which nothing here reads
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zip_file:
        for n in range(ENTRIES_ALLOWED * ZIP_DIRECTORY_BYTES_PER_ENTRY // len(comment) + 1):
            info = zipfile.ZipInfo(f"{n}.png")
            info.comment = comment
            zip_file.writestr(info, png(n))

    answer = await api.post("/jobs", files={"files": ("long.zip", buffer.getvalue(), "application/zip")})

    body = assert_problem(answer, 413, "too-many-files")
    assert "long.zip has a central directory of" in body["detail"]
    assert f"more than the {ENTRIES_ALLOWED * ZIP_DIRECTORY_BYTES_PER_ENTRY:,} bytes of directory" in body["detail"]
    assert_nothing_kept(redis_db, store)


async def test_a_zip_whose_end_record_understates_its_entries_is_refused(api: httpx.AsyncClient, redis_db: Redis,
                                                                        store: JobStore):
    # zipfile parses as many bytes of directory as the end record says, whatever count it states.
    archive = zip_of({f"{n}/": b"" for n in range(ENTRIES_ALLOWED)} | {"a.png": png()})
    end = len(archive) - 22  # the end record, with no comment after it
    understated = archive[:end + 8] + struct.pack("<HH", 1, 1) + archive[end + 12:]

    answer = await api.post("/jobs", files={"files": ("understated.zip", understated, "application/zip")})

    body = assert_problem(answer, 413, "too-many-files")
    assert f"understated.zip lists {ENTRIES_ALLOWED + 1} entries" in body["detail"]
    assert_nothing_kept(redis_db, store)


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
