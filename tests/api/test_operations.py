"""Health, readiness, models and metrics, read from the live service."""

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.jobstore import JobStore

pytestmark = pytest.mark.model


def samples(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def test_ready_when_a_worker_has_loaded_its_model(client: httpx.Client):
    answer = client.get("/readyz")

    assert answer.status_code == 200
    assert answer.json()["workers"] >= 1


def test_models_lists_what_the_live_workers_serve(client: httpx.Client):
    (model,) = client.get("/models").json()["models"]

    assert model["name"] == "xception-pneumonia" and model["version"] == "0.3.0"
    assert model["labels"] == ["NORMAL", "PNEUMONIA"]
    assert len(model["sha256"]) == 64 and model["workers"] >= 1


def test_metric_counters_move_with_real_jobs(client: httpx.Client, store: JobStore, radiographs: list[Path]):
    before = samples(client)
    files = [("files", (path.name, path.read_bytes())) for path in radiographs[:3]]
    files.append(("files", ("bad.png", b"not an image")))
    jobs = client.post("/jobs", files=files).json()["jobs"]
    for job in jobs:
        client.get(f"/jobs/{job['id']}", params={"wait": 30})

    after = samples(client)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("pneuradnet_jobs_total", event="submitted") == 4
    assert moved("pneuradnet_jobs_total", event="succeeded") == 3
    assert moved("pneuradnet_jobs_total", event="failed") == 1
    assert moved("pneuradnet_job_failures_total", reason="invalid-image") == 1
    assert moved("pneuradnet_lane_jobs_finished_total", lane="interactive") == 4  # 4 images: the interactive lane
    assert moved("pneuradnet_batch_size_count") >= 1
    assert moved("pneuradnet_batch_size_sum") == 3
    assert moved("pneuradnet_queue_wait_seconds_count") == 4
    assert moved("pneuradnet_inference_seconds_count") >= 1
    assert after[("pneuradnet_workers_live", ())] >= 1
    assert after[("pneuradnet_queue_depth", ())] == 0
    assert after[("pneuradnet_ready", ())] == 1
    assert after[("pneuradnet_oldest_queued_seconds", (("lane", "bulk"),))] == 0
