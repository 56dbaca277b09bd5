"""The job service end to end: the live API, a live worker with the real default model, real Redis."""

import csv
import io
import json
import socket
import subprocess
import sys
import time
import zipfile
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from service.jobstore import JobStore, Upload
from tests.processes import ROOT, wait_until

pytestmark = pytest.mark.model

PROBLEM_JSON = "application/problem+json"


def upload(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (path.name, path.read_bytes(), "image/jpeg")) for path in paths]


def finish(client: httpx.Client, jobs: list[dict]) -> list[dict]:
    finished = []
    for job in jobs:
        answer = client.get(f"/jobs/{job['id']}", params={"wait": 30})
        assert answer.status_code == 200
        finished.append(answer.json())
    return finished


def test_a_bulk_upload_of_real_radiographs_matches_the_cli(client: httpx.Client, radiographs: list[Path]):
    submitted = client.post("/jobs", files=upload(radiographs))

    assert submitted.status_code == 202
    body = submitted.json()
    assert submitted.headers["location"] == f"/batches/{body['batch_id']}"
    assert [job["filename"] for job in body["jobs"]] == [path.name for path in radiographs]
    jobs = finish(client, body["jobs"])
    assert all(job["status"] == "succeeded" for job in jobs)

    cli = subprocess.run([sys.executable, "-m", "pneuradnet.cli", "predict", *map(str, radiographs)],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    expected = {Path(record["filename"]).name: record for record in map(json.loads, cli.stdout.splitlines())}
    for job in jobs:
        result = job["result"]
        assert result["labels"] == ["NORMAL", "PNEUMONIA"]
        assert result["model"] == {"name": "xception-pneumonia", "version": "0.3.0"}
        assert result["predictions"] == pytest.approx(expected[job["filename"]]["predictions"], abs=1e-5)
        assert result["predicted_class"] == expected[job["filename"]]["predicted_class"]


def test_a_long_poll_answers_within_a_second_of_completion(client: httpx.Client, radiographs: list[Path]):
    (job,) = client.post("/jobs", files=upload(radiographs[:1])).json()["jobs"]

    answer = client.get(f"/jobs/{job['id']}", params={"wait": 30})
    received = datetime.now().astimezone()

    finished = answer.json()
    assert finished["status"] == "succeeded"
    assert "retry-after" not in answer.headers
    finished_at = datetime.fromisoformat(finished["finished_at"])
    assert (received - finished_at).total_seconds() < 1.0


def test_an_unfinished_job_tells_the_client_when_to_poll_again(client: httpx.Client, store: JobStore):
    _, (job,), _ = store.create_batch([Upload("never-enqueued.png", b"\x89PNG")])

    started = time.monotonic()
    answer = client.get(f"/jobs/{job.id}", params={"wait": 0.5})

    assert time.monotonic() - started >= 0.5
    assert answer.json()["status"] == "queued"
    assert answer.headers["retry-after"] == "1"


def test_the_batch_pages_through_its_jobs_with_counts(client: httpx.Client, radiographs: list[Path]):
    body = client.post("/jobs", files=upload(radiographs[:5])).json()
    finish(client, body["jobs"])

    seen, token, pages = [], None, 0
    while True:
        params = {"page_size": 2, **({"page_token": token} if token else {})}
        page = client.get(f"/batches/{body['batch_id']}", params=params).json()
        assert page["total"] == 5 and page["counts"]["succeeded"] == 5
        seen += [job["id"] for job in page["jobs"]]
        pages += 1
        token = page["next_page_token"]
        if token is None:
            break
    assert pages == 3
    assert seen == [job["id"] for job in body["jobs"]]
    assert all(job["result"]["predicted_class"] for job in page["jobs"])


def test_the_batch_exports_one_csv_row_per_image(client: httpx.Client, radiographs: list[Path]):
    body = client.post("/jobs", files=upload(radiographs[:3])).json()
    jobs = finish(client, body["jobs"])

    answer = client.get(f"/batches/{body['batch_id']}", params={"format": "csv"})

    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [row["filename"] for row in rows] == [path.name for path in radiographs[:3]]
    for row, job in zip(rows, jobs, strict=True):
        assert row["status"] == "succeeded"
        assert row["predicted_class"] == job["result"]["predicted_class"]
        assert float(row["PNEUMONIA"]) == pytest.approx(job["result"]["predictions"][1])
        assert float(row["NORMAL"]) + float(row["PNEUMONIA"]) == pytest.approx(1.0)


@pytest.mark.parametrize("path", ["/predict/", "/predict"])
def test_predict_answers_in_the_original_shape(client: httpx.Client, radiographs: list[Path], path: str):
    confident_pneumonia = next(p for p in radiographs if p.stem == "person1952_bacteria_4883")

    answer = client.post(path, files={"file": (confident_pneumonia.name, confident_pneumonia.read_bytes())})

    assert answer.status_code == 200
    body = answer.json()
    assert body["filename"] == confident_pneumonia.name
    assert len(body["predictions"]) == 1 and len(body["predictions"][0]) == 2
    assert body["predicted_class"] == "PNEUMONIA"
    assert body["confidence"] == max(body["predictions"][0])
    assert body["model"]["name"] == "xception-pneumonia"
    assert client.get(f"/jobs/{body['job_id']}").json()["status"] == "succeeded"


def test_predict_of_a_non_image_is_a_clear_problem(client: httpx.Client):
    answer = client.post("/predict/", files={"file": ("notes.png", b"these are notes, not pixels")})

    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM_JSON
    assert "not an image" in answer.json()["detail"]


def test_an_unknown_job_is_a_404_problem(client: httpx.Client):
    answer = client.get("/jobs/00000000-0000-4000-8000-000000000000")

    assert answer.status_code == 404
    assert answer.headers["content-type"] == PROBLEM_JSON
    assert answer.json()["detail"] == "there is no job 00000000-0000-4000-8000-000000000000 (or it has expired)"


def test_a_non_image_fails_its_own_job_and_the_rest_of_the_batch_succeeds(client: httpx.Client,
                                                                          radiographs: list[Path]):
    files = [*upload(radiographs[:2]), ("files", ("report.png", b"%PDF-1.7 not an image", "image/png"))]
    jobs = finish(client, client.post("/jobs", files=files).json()["jobs"])

    assert [job["status"] for job in jobs] == ["succeeded", "succeeded", "failed"]
    assert jobs[2]["result"] is None
    assert jobs[2]["error"]["status"] == 422
    assert jobs[2]["error"]["detail"] == "not an image: send PNG, JPEG or DICOM"


def test_a_zip_of_radiographs_becomes_one_job_per_image(client: httpx.Client, radiographs: list[Path]):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zip_file:
        for path in radiographs[:3]:
            zip_file.write(path, f"study-1/{path.name}")
        zip_file.writestr("study-1/.DS_Store", b"finder junk")
    files = {"files": ("studies.zip", archive.getvalue(), "application/zip")}

    jobs = finish(client, client.post("/jobs", files=files).json()["jobs"])

    assert [job["filename"] for job in jobs] == [f"study-1/{path.name}" for path in radiographs[:3]]
    assert all(job["status"] == "succeeded" for job in jobs)


def test_the_api_process_never_imports_tensorflow():
    probe = "import sys, api.main; print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert imported.stdout.strip() == "[]"


def test_a_batch_long_poll_answers_once_every_job_has_finished(client: httpx.Client, radiographs: list[Path]):
    files = [*upload(radiographs[:5]), ("files", ("bad.png", b"not an image"))]
    body = client.post("/jobs", files=files).json()

    answer = client.get(f"/batches/{body['batch_id']}", params={"wait": 30})

    batch = answer.json()
    assert batch["counts"]["succeeded"] == 5 and batch["counts"]["failed"] == 1
    assert all(job["finished_at"] for job in batch["jobs"])
    assert "retry-after" not in answer.headers


def test_an_unfinished_batch_tells_the_client_when_to_poll_again(client: httpx.Client, store: JobStore):
    batch, _, _ = store.create_batch([Upload("never-enqueued.png", b"\x89PNG")])

    answer = client.get(f"/batches/{batch.id}", params={"wait": 0.5})

    assert answer.json()["counts"]["queued"] == 1
    assert answer.headers["retry-after"] == "1"


def test_a_client_that_disconnects_mid_upload_leaves_nothing_behind(api_url: str, store: JobStore):
    host, port = api_url.removeprefix("http://").split(":")
    boundary = "pneuradnet-cut"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"study.zip\"\r\n"
            "Content-Type: application/zip\r\n\r\n").encode()
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(f"POST /jobs HTTP/1.1\r\nHost: {host}\r\nContent-Length: {10 * 2**20}\r\n"
                           f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode() + head)
        connection.sendall(b"PK\x03\x04" + bytes(2**20))  # a tenth of what it announced, then it goes away

    wait_until(lambda: httpx.get(f"{api_url}/healthz").status_code == 200, timeout=5, what="the API")
    time.sleep(0.5)
    assert store.queued_count() == 0
    assert store.metrics().get("jobs_submitted", 0) == 0
