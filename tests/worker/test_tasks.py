"""What a model process loads for its tasks (worker.tasks): it announces the model it serves, and with
EXPLAIN_ENABLED off it has no explainer, so an explained job gets its prediction and no heatmap."""

from pathlib import Path

import pytest

from service.jobstore import JobStatus, JobStore, Upload
from service.settings import Settings
from tests.live_service import TEST_REDIS_URL
from worker.processing import process_jobs
from worker.tasks import load_resources


@pytest.mark.model
def test_a_process_with_explanations_off_announces_its_model_and_explains_nothing(store: JobStore,
                                                                                 radiographs: list[Path]):
    resources = load_resources(Settings(redis_url=TEST_REDIS_URL, explain_enabled=False))
    try:
        [announced] = [each for each in resources.registry.live() if each["name"] == resources.name]
        assert announced["model_name"] == resources.classifier.manifest.name
        assert announced["runtime"] == "onnxruntime"
        assert resources.explainer is None

        _, (job,), _ = store.create_batch([Upload("a.jpeg", radiographs[0].read_bytes())], explain=True)
        process_jobs([job.id], store=resources.store, images=resources.images, classifier=resources.classifier,
                     token="run-1", lease=60, max_deliveries=3, worker=resources.name, explainer=resources.explainer)

        done = store.get_job(job.id)
        assert done.status is JobStatus.SUCCEEDED and done.result["predicted_class"]
        assert done.result["heatmap"] is False
        assert done.result["explanation_error"] == "this worker does not compute explanations"
        assert store.heatmap(job.id) is None
    finally:
        resources.registry.retire(resources.name)
        resources.registry.close()
        resources.store.close()


@pytest.mark.model
def test_a_process_refuses_images_below_its_minimum_side(store: JobStore, radiographs: list[Path]):
    resources = load_resources(Settings(redis_url=TEST_REDIS_URL, min_image_side=2000))
    try:
        _, (job,), _ = store.create_batch([Upload("a.jpeg", radiographs[0].read_bytes())])
        process_jobs([job.id], store=resources.store, images=resources.images, classifier=resources.classifier,
                     token="run-1", lease=60, max_deliveries=3, worker=resources.name, explainer=resources.explainer)

        failed = store.get_job(job.id)
        assert failed.status is JobStatus.FAILED
        assert "too small for a radiograph: the minimum is 2000 pixels on each side" in failed.error["detail"]
    finally:
        resources.registry.retire(resources.name)
        resources.registry.close()
        resources.store.close()
