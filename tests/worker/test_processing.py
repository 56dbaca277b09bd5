"""Running a chunk of jobs in-process (worker.processing) with the real default model and real Redis: what an
explained job stores, and what it does when its explanation cannot be made."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneuradnet.errors import ModelManifestError
from service.images import JobImages
from service.jobstore import JobStatus, JobStore, Upload
from tests.processes import ROOT
from worker.processing import LazyExplainer, process_jobs


class StripedExplainer:
    """Stands in for GradCam: a fixed heatmap, and the calls it got."""

    layer_path = ("fake",)

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], int]] = []

    def heatmap(self, pixels: np.ndarray, class_index: int) -> np.ndarray:
        self.calls.append((pixels.shape, class_index))
        return np.tile(np.linspace(0, 1, 5, dtype=np.float32), (5, 1))


def run(store: JobStore, classifier, job_ids: list[str], explainer) -> None:
    process_jobs(job_ids, store=store, images=JobImages(store, None, None), classifier=classifier, token="run-1",
                 lease=60, max_deliveries=3, explainer=explainer)


@pytest.mark.model
def test_only_the_explained_job_gets_a_heatmap_stored_before_it_succeeds(store: JobStore, default_classifier,
                                                                        radiographs: list[Path]):
    data = radiographs[-1].read_bytes()
    _, (explained,), _ = store.create_batch([Upload("a.jpeg", data)], explain=True)
    _, (plain,), _ = store.create_batch([Upload("b.jpeg", data)])
    fake = StripedExplainer()
    loads = []

    run(store, default_classifier, [explained.id, plain.id], LazyExplainer(lambda: loads.append(1) or fake))

    explained, plain = store.get_job(explained.id), store.get_job(plain.id)
    assert explained.status is plain.status is JobStatus.SUCCEEDED
    assert explained.result["predictions"] == pytest.approx(plain.result["predictions"], abs=1e-5)  # not bit-equal
    assert explained.result["heatmap"] is True and "explain" in explained.result["timings_ms"]
    assert "heatmap" not in plain.result
    predicted = explained.result["labels"].index(explained.result["predicted_class"])
    assert fake.calls == [((150, 150, 3), predicted)] and loads == [1]
    assert Image.open(io.BytesIO(store.heatmap(explained.id))).size == Image.open(radiographs[-1]).size
    assert store.heatmap(plain.id) is None


@pytest.mark.model
def test_an_explanation_that_cannot_be_made_leaves_the_prediction_and_says_why(store: JobStore, default_classifier,
                                                                               radiographs: list[Path]):
    attempts = []

    def broken():
        attempts.append(1)
        raise ModelManifestError("manifest 'x' names no explain_layer")

    explainer = LazyExplainer(broken)
    for _ in range(2):
        _, (job,), _ = store.create_batch([Upload("a.jpeg", radiographs[0].read_bytes())], explain=True)
        run(store, default_classifier, [job.id], explainer)

        done = store.get_job(job.id)
        assert done.status is JobStatus.SUCCEEDED and done.result["predicted_class"]
        assert done.result["heatmap"] is False
        assert done.result["explanation_error"] == "manifest 'x' names no explain_layer"
        assert store.heatmap(job.id) is None
    assert attempts == [1], "a load that failed is not tried again for every job"


class CountingClassifier:
    """The real classifier, counting its forward passes; `after_forward_pass` runs once each has been made."""

    def __init__(self, classifier, after_forward_pass) -> None:
        self._classifier = classifier
        self._after = after_forward_pass
        self.forward_passes = 0
        self.max_batch = classifier.max_batch

    def prepare_each(self, *args, **kwargs):
        return self._classifier.prepare_each(*args, **kwargs)

    def predict(self, images):
        predictions = self._classifier.predict(images)
        self.forward_passes += 1
        self._after()
        return predictions


@pytest.mark.model
def test_results_outlive_a_redis_outage_after_the_forward_pass(store: JobStore, default_classifier,
                                                               radiographs: list[Path]):
    """Redis restarts, or the network drops, just as a chunk's results are to be stored: they are stored once it
    answers again, and the work is not done twice."""
    from tests.live_service import TEST_REDIS_URL
    from tests.lossy_proxy import lossy_proxy

    _, jobs, _ = store.create_batch([Upload(path.name, path.read_bytes()) for path in radiographs[:4]])
    with lossy_proxy() as proxy:
        through_proxy = JobStore(f"{proxy.url}/{TEST_REDIS_URL.rsplit('/', 1)[1]}", ttl=600)
        counting = CountingClassifier(default_classifier, lambda: proxy.cut_for(4.0))
        process_jobs([job.id for job in jobs], store=through_proxy, images=JobImages(through_proxy, None, None),
                     classifier=counting, token="run-1", lease=60, max_deliveries=3)
        through_proxy.close()

    assert counting.forward_passes == 1
    assert [job.status for job in store.get_jobs([job.id for job in jobs])] == [JobStatus.SUCCEEDED] * 4
    assert store.metrics()["jobs_succeeded"] == 4


@pytest.mark.model
def test_a_chunk_runs_in_passes_and_makes_way_between_them(store: JobStore, default_classifier,
                                                           radiographs: list[Path]):
    """A chunk of three passes' worth: each pass's results are stored as the pass ends, and when urgent work waits
    after the first pass, the rest is given back, queued and not counted as a delivery, for the task to send on. The
    run that takes the rest does two passes more: every image is forward-passed once, as in one process."""
    size = default_classifier.max_batch
    paths = [radiographs[n % len(radiographs)] for n in range(2 * size + 3)]
    _, jobs, _ = store.create_batch([Upload(path.name, path.read_bytes()) for path in paths])
    ids = [job.id for job in jobs]
    finished_at_each_pass: list[int] = []
    counting = CountingClassifier(default_classifier, lambda: finished_at_each_pass.append(
        sum(job.status is JobStatus.SUCCEEDED for job in store.get_jobs(ids))))
    images = JobImages(store, None, None)

    left = process_jobs(ids, store=store, images=images, classifier=counting, token="run-1", lease=60,
                        max_deliveries=3, yield_between_passes=lambda: True)

    assert counting.forward_passes == 1 and left == ids[size:]
    assert [job.status for job in store.get_jobs(ids)] == [JobStatus.SUCCEEDED] * size + [JobStatus.QUEUED] * (size + 3)
    assert all(job.deliveries == 0 for job in store.get_jobs(left))

    assert process_jobs(left, store=store, images=images, classifier=counting, token="run-2", lease=60,
                        max_deliveries=3) == []

    assert counting.forward_passes == 3
    assert finished_at_each_pass == [0, size, 2 * size]  # a pass's results are stored before the next pass ends
    done = store.get_jobs(ids)
    assert all(job.status is JobStatus.SUCCEEDED and job.deliveries == 1 for job in done)
    alone = default_classifier.classify([(path.name, path.read_bytes()) for path in paths])
    for job, prediction in zip(done, alone, strict=True):
        assert job.result["predictions"] == pytest.approx(list(prediction.predictions), abs=1e-5)
    assert store.metrics()["jobs_succeeded"] == len(ids)


def test_the_worker_module_does_not_import_tensorflow():
    probe = "import sys, worker.tasks; print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert imported.stdout.strip() == "[]"
