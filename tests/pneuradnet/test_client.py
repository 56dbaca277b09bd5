"""The Python client and `pneuradnet submit`, against the live service: real API, real worker, real Redis."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.submission import BUSY_RETRY_AFTER
from pneuradnet.client import Client, ServiceError
from service.jobstore import JobStore, Upload
from tests.live_service import start_api
from tests.processes import ROOT, free_port, stop, wait_until

pytestmark = pytest.mark.model

UNKNOWN_JOB = "00000000-0000-4000-8000-000000000000"
KEY = "key-of-the-busy-api"
NOT_AN_IMAGE = "not an image: send PNG, JPEG or DICOM"


def submit_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "pneuradnet.cli", "submit", *map(str, args)]


def run_submit(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(submit_command(*args), capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, **(env or {})})


def jobs_submitted(store: JobStore) -> int:
    """Jobs the service has created since the job store was wiped, counted by the store itself."""
    return int(store.metrics().get("jobs_submitted", 0))


@pytest.fixture
def folder(tmp_path: Path, radiographs: list[Path]) -> Path:
    """Four real radiographs (two NORMAL, two pneumonia), a report named like an image, and a text file."""
    images = tmp_path / "images"
    images.mkdir()
    for path in radiographs[::4]:
        shutil.copy(path, images / path.name)
    (images / "broken.png").write_text("a report, not a radiograph")
    (images / "notes.txt").write_text("not named like an image: never sent")
    return images


@pytest.fixture(scope="module")
def busy_api(tmp_path_factory: pytest.TempPathFactory, broker_clean: None) -> Iterator[str]:
    """An API that needs a key and takes at most one queued job: one stored job fills it."""
    process, url = start_api(tmp_path_factory.mktemp("busy") / "api.log", MAX_QUEUE="1", API_KEYS=KEY)
    yield url
    stop(process)


# --- pneuradnet submit -----------------------------------------------------------------------------------------


def test_submit_writes_one_row_per_image_as_the_api_answers(client: httpx.Client, store: JobStore, folder: Path,
                                                            tmp_path: Path, api_url: str):
    out = tmp_path / "results.csv"

    result = run_submit(folder, "--api", api_url, "--out", out)

    assert result.returncode == 1, result.stderr  # one image failed
    assert "Traceback" not in result.stderr
    with out.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    assert reader.fieldnames == ["filename", "status", "predicted_class", "confidence", "NORMAL", "PNEUMONIA",
                                 "error", "job_id"]
    expected = sorted([*folder.glob("*.jpeg"), folder / "broken.png"])
    assert [row["filename"] for row in rows] == [str(path) for path in expected]
    for row in rows:
        job = client.get(f"/jobs/{row['job_id']}").json()
        assert row["status"] == job["status"]
        if row["filename"].endswith("broken.png"):
            assert row["status"] == "failed"
            assert row["error"] == job["error"]["detail"] == NOT_AN_IMAGE
            assert row["predicted_class"] == row["NORMAL"] == row["PNEUMONIA"] == ""
            continue
        assert row["status"] == "succeeded" and row["error"] == ""
        assert row["predicted_class"] == job["result"]["predicted_class"]
        assert float(row["confidence"]) == pytest.approx(job["result"]["confidence"])
        assert [float(row[label]) for label in job["result"]["labels"]] == pytest.approx(job["result"]["predictions"])
    assert {row["predicted_class"] for row in rows} == {"NORMAL", "PNEUMONIA", ""}
    assert jobs_submitted(store) == len(rows) == 5  # notes.txt is not an image name: never sent
    assert len(json.loads((tmp_path / "results.csv.state.json").read_text())["batches"]) == 1
    # stderr is not a terminal here: progress comes as plain lines, the last one with the final count.
    assert result.stderr.splitlines()[0] == "uploaded 5 of 5 images"
    assert result.stderr.splitlines()[-1] == "finished 5 of 5 images (1 failed)"


def test_submit_csv_has_the_models_label_columns_when_every_image_failed_and_no_formula_cell(
        client: httpx.Client, tmp_path: Path, api_url: str):
    folder = tmp_path / "reports"
    folder.mkdir()
    hostile = ['=HYPERLINK("http://example.invalid","x").jpeg', "+SUM(1+1).jpeg"]
    for name in hostile:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)  # the slashes of the URL make folders
        (folder / name).write_text("a report saved with an image's name")
    out = tmp_path / "results.csv"

    # Run from the folder with bare names, so the file names start the filename cells.
    result = subprocess.run(submit_command(*hostile, "--api", api_url, "--out", out), capture_output=True,
                            text=True, cwd=folder, timeout=300)

    assert result.returncode == 1, result.stderr
    with out.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    # No result names the labels: the service's /models does.
    assert reader.fieldnames == ["filename", "status", "predicted_class", "confidence", "NORMAL", "PNEUMONIA",
                                 "error", "job_id"]
    assert [row["filename"] for row in rows] == ["'" + str(Path(name)) for name in hostile]
    assert rows[0]["filename"].startswith("'=HYPERLINK(")
    assert [row["status"] for row in rows] == ["failed", "failed"]


def test_an_interrupted_submit_resumes_without_uploading_twice(client: httpx.Client, store: JobStore, tmp_path: Path,
                                                               radiographs: list[Path], api_url: str):
    images = [tmp_path / path.name for path in radiographs[:4]]
    for image, source in zip(images, radiographs, strict=False):
        if image != images[2]:
            shutil.copy(source, image)
    # The third image is a FIFO that no one writes: reading it blocks, so the run stops right after its first
    # chunk (images 1 and 2) was accepted, and is killed there, without any chance to clean up.
    os.mkfifo(images[2])
    out = tmp_path / "results.jsonl"
    state = tmp_path / "results.jsonl.state.json"
    command = submit_command(*images, "--api", api_url, "--out", out, "--chunk-size", 2)

    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(state.exists, timeout=60, what="the first chunk to be accepted")
        assert first.poll() is None  # still running: blocked on the second chunk
    finally:
        first.kill()
        first.wait()
    (first_batch,) = json.loads(state.read_text())["batches"].values()
    assert jobs_submitted(store) == 2
    assert not out.exists()

    images[2].unlink()
    shutil.copy(radiographs[2], images[2])
    second = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)

    assert second.returncode == 0, second.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["path"] for record in records] == [str(image) for image in images]
    assert [record["filename"] for record in records] == [image.name for image in images]
    assert all(record["status"] == "succeeded" for record in records)
    assert [record["batch_id"] for record in records[:2]] == [first_batch] * 2  # taken up, not uploaded again
    assert jobs_submitted(store) == len(images)

    # Even without its state file, a rerun makes nothing new: the service knows each chunk by its idempotency key.
    state.unlink()
    third = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert third.returncode == 0, third.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [record["id"] for record in records]
    assert jobs_submitted(store) == len(images)


def test_submit_takes_the_key_from_the_environment_and_reports_a_refusal_on_one_line(
        busy_api: str, store: JobStore, worker_process: subprocess.Popen, radiographs: list[Path]):
    refused = run_submit(radiographs[0], "--api", busy_api, env={"PNEURADNET_API_KEY": ""})

    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "pneuradnet: error: the service answered 401 (unauthorized): this service needs an API key: "
        "send `Authorization: Bearer <key>`"]

    accepted = run_submit(radiographs[0], "--api", busy_api, env={"PNEURADNET_API_KEY": KEY})

    assert accepted.returncode == 0, accepted.stderr
    (batch_id,) = accepted.stdout.split()  # without --wait: the batch ids
    with Client(busy_api, key=KEY) as service:
        (job,) = service.batch(batch_id)
        assert service.wait([job["id"]], timeout=120)[0]["status"] == "succeeded"


# --- the client ------------------------------------------------------------------------------------------------


def test_submit_then_wait_gives_the_finished_jobs_in_order(client: httpx.Client, api_url: str,
                                                           radiographs: list[Path]):
    with Client(api_url) as service:
        submission = service.submit([radiographs[0], (radiographs[-1].name, radiographs[-1].read_bytes()),
                                     ("notes.png", b"not pixels")])
        jobs = service.wait([job["id"] for job in submission.jobs], timeout=120)
        pages = service.batch(submission.batch_id, page_size=2)

    assert [job["filename"] for job in submission.jobs] == [radiographs[0].name, radiographs[-1].name, "notes.png"]
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded", "failed"]
    assert [job["result"]["predicted_class"] for job in jobs[:2]] == ["NORMAL", "PNEUMONIA"]
    assert jobs[2]["error"]["detail"] == NOT_AN_IMAGE
    # Two pages of the batch, read as one list; a job answered alone also carries the notice, a batch once for all.
    assert pages == [{field: value for field, value in job.items() if field != "notice"} for job in jobs]


def test_an_unknown_job_raises_the_services_problem(api_url: str):
    with Client(api_url) as service, pytest.raises(ServiceError) as raised:
        service.get(UNKNOWN_JOB)

    error = raised.value
    assert (error.status, error.kind) == (404, "job-not-found")
    assert error.detail == f"there is no job {UNKNOWN_JOB} (or it has expired)"
    assert error.problem["title"] == "Not Found"
    assert str(error) == f"the service answered 404 (job-not-found): there is no job {UNKNOWN_JOB} (or it has expired)"


def test_a_full_queue_is_retried_after_the_pause_it_asks_for(busy_api: str, store: JobStore,
                                                             worker_process: subprocess.Popen,
                                                             radiographs: list[Path]):
    _, (filler,), _ = store.create_batch([Upload("filler.png", b"x")])  # stored, never enqueued: the queue is full
    pauses: list[float] = []

    def pause(seconds: float) -> None:  # instead of sleeping: note the pause, and let the queue drain meanwhile
        pauses.append(seconds)
        store.cancel(filler.id)

    with Client(busy_api, key=KEY, sleep=pause) as service:
        submission = service.submit([radiographs[0]])
        (job,) = service.wait([submission.jobs[0]["id"]], timeout=120)

    assert pauses == [BUSY_RETRY_AFTER]  # the Retry-After of the 429
    assert job["status"] == "succeeded"
    assert jobs_submitted(store) == 2  # the filler, and the retried submission once


def test_a_queue_that_stays_full_ends_in_a_429_within_the_retry_budget(busy_api: str, store: JobStore):
    store.create_batch([Upload("filler.png", b"x")])
    pauses: list[float] = []

    patient = Client(busy_api, key=KEY, max_attempts=3, max_retry_wait=100, sleep=pauses.append)
    with patient, pytest.raises(ServiceError) as raised:
        patient.submit([("one-more.png", b"x")])
    assert pauses == [BUSY_RETRY_AFTER] * 2  # three attempts
    error = raised.value
    assert (error.status, error.kind, error.retry_after) == (429, "queue-full", BUSY_RETRY_AFTER)
    assert "nothing of this request was queued" in error.detail

    hasty = Client(busy_api, key=KEY, max_retry_wait=BUSY_RETRY_AFTER - 1, sleep=pauses.append)
    with hasty, pytest.raises(ServiceError) as raised:
        hasty.submit([("one-more.png", b"x")])
    assert raised.value.status == 429
    assert pauses == [BUSY_RETRY_AFTER] * 2  # the pause asked for does not fit the budget: none is taken
    assert store.queued_count() == 1


def test_a_store_outage_is_retried_after_its_retry_after_in_real_time(tmp_path: Path):
    process, url = start_api(tmp_path / "api.log", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    try:
        started = time.monotonic()
        with Client(url, max_attempts=2) as service, pytest.raises(ServiceError) as raised:
            service.get(UNKNOWN_JOB)
        elapsed = time.monotonic() - started
    finally:
        stop(process)

    error = raised.value
    assert (error.status, error.kind) == (503, "store-unavailable")
    assert error.retry_after is not None and error.retry_after <= elapsed < error.retry_after + 10
