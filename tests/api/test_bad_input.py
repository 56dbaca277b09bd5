"""Bad input gets a clear problem (4xx) at the API, or a failed job with its reason; never a 500."""

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.jobstore import JobStore

pytestmark = pytest.mark.model

PROBLEM_JSON = "application/problem+json"


def png_declaring(width: int, height: int) -> bytes:
    """A few-byte PNG whose header claims width x height: a decompression bomb if anything trusted it."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data[12:29]  # chunk type + 13 bytes of header data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def encoded(image_format: str, size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "gray").save(buffer, image_format)
    return buffer.getvalue()


def assert_problem(answer: httpx.Response, status: int, detail_part: str) -> None:
    assert answer.status_code == status
    assert answer.headers["content-type"] == PROBLEM_JSON
    body = answer.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("urn:pneuradnet:problem:")
    assert detail_part in body["detail"]
    assert body["error"] == body["detail"]  # what clients of the original service read


def test_each_bad_image_fails_its_own_job_with_its_reason(client: httpx.Client, radiographs: list[Path]):
    jpeg = radiographs[0].read_bytes()
    bad = {
        "empty.png": (b"", "the file is empty"),
        "notes.png": (b"these are notes", "not an image: send PNG, JPEG or DICOM"),
        "report.png": (b"%PDF-1.7\n1 0 obj << >> endobj", "not an image: send PNG, JPEG or DICOM"),
        "cut.jpeg": (jpeg[: len(jpeg) // 2], "truncated JPEG"),
        "bomb.png": (png_declaring(60000, 60000), "image is 60000x60000, the limit is 50,000,000 pixels"),
        "anim.gif": (encoded("GIF"), "GIF images are not accepted: send PNG, JPEG or DICOM"),
        "scan.tiff": (encoded("TIFF"), "TIFF images are not accepted: send PNG, JPEG or DICOM"),
        "photo.webp": (encoded("WEBP"), "WEBP images are not accepted: send PNG, JPEG or DICOM"),
        "dot.png": (encoded("PNG", (1, 1)), "image is 1x1, too small for a radiograph: the minimum is 64 pixels"),
        "icon.jpeg": (encoded("JPEG", (63, 300)), "image is 63x300, too small for a radiograph"),
        "banner.png": (encoded("PNG", (1000, 200)), "image is 1000x200, an aspect ratio of 5.0:1, too elongated "
                                                   "for a radiograph: the most accepted is 4:1"),
    }
    files = [("files", (name, data)) for name, (data, _) in bad.items()]
    files.append(("files", (radiographs[0].name, jpeg)))

    submitted = client.post("/jobs", files=files)
    assert submitted.status_code == 202
    jobs = [client.get(f"/jobs/{job['id']}", params={"wait": 30}).json() for job in submitted.json()["jobs"]]

    for job in jobs[:-1]:
        assert job["status"] == "failed", job["filename"]
        assert job["error"]["status"] == 422
        assert bad[job["filename"]][1] in job["error"]["detail"], job["filename"]
    assert jobs[-1]["status"] == "succeeded"


def test_an_upload_over_the_byte_limit_is_refused_whole(client: httpx.Client, store: JobStore):
    answer = client.post("/jobs", files={"files": ("huge.png", b"\0" * (31 * 1024 * 1024))})

    assert_problem(answer, 413, "larger than the limit of 31,457,280 bytes")
    assert store.queued_count() == 0


def test_more_files_than_allowed_are_refused_whole(client: httpx.Client, store: JobStore):
    files = [("files", (f"{n}.png", b"x")) for n in range(41)]

    answer = client.post("/jobs", files=files)

    assert_problem(answer, 413, "more than 40 images in one request")
    assert store.queued_count() == 0


def test_a_zip_with_folders_junk_and_an_escaping_name_is_read_safely(client: httpx.Client, radiographs: list[Path]):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zip_file:
        zip_file.writestr("scans/", b"")
        zip_file.write(radiographs[0], f"scans/2024/{radiographs[0].name}")
        zip_file.writestr("../../etc/evil.jpeg", radiographs[1].read_bytes())
        zip_file.writestr("scans/readme.txt", b"not an image")
        zip_file.writestr("__MACOSX/scans/._x.jpeg", b"resource fork")

    jobs = client.post("/jobs", files={"files": ("scans.zip", archive.getvalue())}).json()["jobs"]
    jobs = [client.get(f"/jobs/{job['id']}", params={"wait": 30}).json() for job in jobs]

    assert [job["filename"] for job in jobs] == [f"scans/2024/{radiographs[0].name}", "etc/evil.jpeg",
                                                 "scans/readme.txt"]
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded", "failed"]
    assert jobs[2]["error"]["detail"] == "not an image: send PNG, JPEG or DICOM"


def test_a_zip_bomb_is_refused(client: httpx.Client, store: JobStore):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zip_file:
        zip_file.writestr("bomb.png", b"\0" * (20 * 1024 * 1024))

    answer = client.post("/jobs", files={"files": ("bomb.zip", archive.getvalue())})

    assert_problem(answer, 422, "refused as a ZIP bomb")
    assert store.queued_count() == 0


def test_a_broken_zip_is_refused(client: httpx.Client):
    answer = client.post("/jobs", files={"files": ("cut.zip", b"PK\x03\x04" + b"\x00" * 20)})

    assert_problem(answer, 422, "cut.zip is not a readable ZIP archive")


def test_a_broken_multipart_body_is_a_problem(client: httpx.Client):
    answer = client.post("/jobs", content=b"--xyz\r\nContent-Disposition: form-data; name=\"files\"",
                         headers={"content-type": "multipart/form-data; boundary=xyz"})

    assert answer.status_code in (400, 422)
    assert answer.headers["content-type"] == PROBLEM_JSON
    assert answer.json()["detail"]


@pytest.mark.parametrize("field", ["image", "upload"])
def test_a_misnamed_field_says_which_field_to_use(client: httpx.Client, field: str):
    answer = client.post("/jobs", files={field: ("a.png", b"x")})

    assert_problem(answer, 422, "send them in the multipart field `files`")


def test_the_original_client_reads_why_its_image_was_refused(client: httpx.Client):
    answer = client.post("/predict/", files={"file": ("dot.png", encoded("PNG", (1, 1)))})

    assert_problem(answer, 422, "image is 1x1, too small for a radiograph")
    assert answer.json()["error"].startswith("image is 1x1")


def test_a_chunked_upload_over_the_byte_limit_is_refused_as_too_large(client: httpx.Client, store: JobStore):
    boundary = "pneuradnet-test"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"huge.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def body():  # no Content-Length: the body is sent chunked and only its size as it arrives can refuse it
        yield head
        for _ in range(31):
            yield b"\0" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    answer = client.post("/jobs", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})

    assert_problem(answer, 413, "larger than the limit of 31,457,280 bytes")
    assert store.queued_count() == 0


def test_a_zip_counts_once_against_the_byte_limit(client: httpx.Client):
    # 21 MiB of stored (uncompressed) members in a 21 MiB archive: under the 30 MiB limit once, over it if counted
    # twice. The members need not be images to be admitted (their jobs fail in the worker, or are canceled here).
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zip_file:
        for n in range(21):
            zip_file.writestr(f"study/{n}.jpeg", os.urandom(1024 * 1024))

    answer = client.post("/jobs", files={"files": ("study.zip", archive.getvalue())})

    assert answer.status_code == 202, answer.text
    assert len(answer.json()["jobs"]) == 21
    client.delete(f"/batches/{answer.json()['batch_id']}")


def test_predict_without_its_file_field_says_so(client: httpx.Client):
    answer = client.post("/predict/", files={"files": ("a.png", b"x")})

    assert_problem(answer, 422, "body.file: Field required")


@pytest.mark.parametrize("path", ["/jobs/not-a-uuid", "/batches/123", "/jobs/00000000-0000-4000-8000-00000000000Z"])
def test_a_malformed_id_is_a_clear_problem(client: httpx.Client, path: str):
    assert_problem(client.get(path), 422, "should be a valid UUID")


def test_an_unknown_batch_is_a_404_problem(client: httpx.Client):
    assert_problem(client.get("/batches/00000000-0000-4000-8000-000000000000"), 404, "there is no batch")


@pytest.mark.parametrize("wait", ["31", "-1", "soon", "1e9"])
def test_an_out_of_range_wait_is_a_clear_problem(client: httpx.Client, wait: str):
    answer = client.get("/jobs/00000000-0000-4000-8000-000000000000", params={"wait": wait})

    assert_problem(answer, 422, "query.wait")


@pytest.mark.parametrize("params", [{"page_size": "0"}, {"page_size": "5000"}, {"page_token": "abc"},
                                    {"format": "xml"}])
def test_bad_batch_parameters_are_clear_problems(client: httpx.Client, params: dict[str, str]):
    answer = client.get("/batches/00000000-0000-4000-8000-000000000000", params=params)

    assert_problem(answer, 422, "query.")
