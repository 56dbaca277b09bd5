"""Explanations end to end: a job submitted with explain=true gets a Grad-CAM heatmap from the live worker, and
the same probabilities as the same image submitted without it."""

import io
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.jobstore import JobStore, Upload

pytestmark = pytest.mark.model

PROBLEM_JSON = "application/problem+json"

FIRST_EXPLANATION_TIMEOUT = 240
"""Seconds an explained job may take here: the worker's first one loads TensorFlow and the Keras model."""


def submit(client: httpx.Client, path: Path, **params: str) -> dict:
    answer = client.post("/jobs", params=params, files={"files": (path.name, path.read_bytes(), "image/jpeg")})
    assert answer.status_code == 202
    (job,) = answer.json()["jobs"]
    return job


def finish(client: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + FIRST_EXPLANATION_TIMEOUT
    while True:
        job = client.get(f"/jobs/{job_id}", params={"wait": 30}).json()
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return job


def test_an_explained_job_has_a_heatmap_of_the_radiographs_size_and_the_same_probabilities(
        client: httpx.Client, radiographs: list[Path]):
    path = radiographs[-1]

    explained = submit(client, path, explain="true")
    plain = submit(client, path)

    assert explained["explain"] is True and plain["explain"] is False
    explained, plain = finish(client, explained["id"]), finish(client, plain["id"])
    assert explained["status"] == plain["status"] == "succeeded", explained["result"]
    assert explained["result"]["predictions"] == pytest.approx(plain["result"]["predictions"], abs=1e-5)
    assert explained["result"]["predicted_class"] == plain["result"]["predicted_class"]
    assert explained["result"]["explanation_error"] is None
    assert explained["result"]["heatmap_url"] == f"/jobs/{explained['id']}/heatmap.png"
    assert "explain" in explained["result"]["timings_ms"]
    assert plain["result"]["heatmap_url"] is None

    heatmap = client.get(explained["result"]["heatmap_url"])
    assert heatmap.status_code == 200
    assert heatmap.headers["content-type"] == "image/png"
    assert heatmap.headers["cache-control"] == "no-store"
    image = Image.open(io.BytesIO(heatmap.content))
    assert image.format == "PNG" and image.size == Image.open(path).size

    missing = client.get(f"/jobs/{plain['id']}/heatmap.png")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM_JSON
    assert missing.json()["detail"] == f"job {plain['id']} has no heatmap: it was not submitted with explain=true"


def test_the_heatmap_of_an_explained_job_that_has_not_finished_is_a_409(client: httpx.Client, store: JobStore):
    _, (job,), _ = store.create_batch([Upload("never-enqueued.png", b"\x89PNG")], explain=True)

    answer = client.get(f"/jobs/{job.id}/heatmap.png")

    assert answer.status_code == 409
    assert answer.headers["content-type"] == PROBLEM_JSON
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["type"].endswith("job-not-finished")


def test_the_heatmap_of_an_unknown_job_is_a_404(client: httpx.Client):
    answer = client.get("/jobs/00000000-0000-4000-8000-000000000000/heatmap.png")

    assert answer.status_code == 404
    assert answer.headers["content-type"] == PROBLEM_JSON
