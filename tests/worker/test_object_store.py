"""Images in an S3-compatible object store (a real SeaweedFS), with real API and worker processes: classified from
the bucket as from Redis, the service's own deleted once done or expired and a client's never, a store that goes
away waited for; and a Redis at its maxmemory that refuses what would not fit instead of falling over."""

import csv
import io
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from service.imagestore import ObjectLocation, ObjectStore, ObjectUnreadable
from service.jobstore import JobStore
from service.keys import IMAGES_OWNED
from tests.live_service import start_api, start_worker
from tests.objectstore import SeaweedFS
from tests.processes import ROOT, forward_passes, free_port, stop, wait_until

pytestmark = pytest.mark.model

BUCKET = "pneuradnet-live"
SWEEP_INTERVAL = 1


def zipped(radiographs: list[Path], count: int, prefix: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for n in range(count):
            archive.writestr(f"{prefix}-{n:03d}.jpeg", radiographs[n % len(radiographs)].read_bytes())
    return buffer.getvalue()


def finished_batch(client: httpx.Client, batch_id: str, *, polls: int = 10) -> dict:
    for _ in range(polls):
        batch = client.get(f"/batches/{batch_id}", params={"wait": 30, "page_size": 1000}).json()
        if sum(batch["counts"][status] for status in ("succeeded", "failed", "canceled")) == batch["total"]:
            return batch
    raise AssertionError(f"batch {batch_id} did not finish: {batch['counts']}")


@pytest.fixture
def redis_database() -> Iterator[str]:
    url = "redis://127.0.0.1:6379/7"
    Redis.from_url(url).flushdb()
    yield url
    Redis.from_url(url).flushdb()


def test_images_are_classified_from_the_bucket_and_only_the_service_s_own_are_deleted(
        object_store: SeaweedFS, redis_database: str, radiographs: list[Path], default_classifier, tmp_path: Path):
    folder = ObjectLocation(BUCKET, f"test-{uuid.uuid4().hex}")
    settings = {"REDIS_URL": redis_database, "IMAGE_STORE": f"{folder}/uploads",
                "IMAGE_SOURCES": f"{folder}/archive/", "SWEEP_INTERVAL": str(SWEEP_INTERVAL), **object_store.env}
    objects = ObjectStore(endpoint=object_store.endpoint)
    archive = [folder.child(f"archive/{path.name}") for path in radiographs[:4]]
    objects.put_many([(location, path.read_bytes()) for location, path in zip(archive, radiographs, strict=False)])
    objects.put_many([(folder.child("archive/notes.txt"), b"not an image")])
    worker = start_worker(tmp_path / "worker.log", **settings)
    api, url = start_api(tmp_path / "api.log", **settings)
    store = JobStore(redis_database, ttl=600)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            uploaded = client.post("/jobs", files={"files": ("study.zip", zipped(radiographs, 16, "up"))}).json()
            named = client.post("/jobs", json={"images": [*map(str, archive), str(folder.child("archive/gone.jpeg")),
                                                          str(folder.child("archive/notes.txt"))]}).json()
            by_upload = finished_batch(client, uploaded["batch_id"])["jobs"]
            by_reference = finished_batch(client, named["batch_id"])["jobs"]
            wait_until(lambda: Redis.from_url(redis_database).zcard(IMAGES_OWNED) == 0, timeout=10 + SWEEP_INTERVAL,
                       what="the uploaded images to be deleted")
    finally:
        stop(api)
        stop(worker)

    expected = [prediction.predictions
                for prediction in default_classifier.classify((path.name, path.read_bytes()) for path in radiographs)]
    assert [job["status"] for job in by_upload] == ["succeeded"] * 16
    for job, probabilities in zip(by_upload, expected, strict=True):
        assert job["result"]["predictions"] == pytest.approx(probabilities, abs=1e-5)
    assert [job["status"] for job in by_reference] == ["succeeded"] * 4 + ["failed"] * 2
    for job, probabilities in zip(by_reference[:4], expected, strict=False):
        assert job["result"]["predictions"] == pytest.approx(probabilities, abs=1e-5)
    gone, not_an_image = by_reference[4:]
    assert gone["error"]["type"].endswith(":image-unreadable") and "does not exist" in gone["error"]["detail"]
    assert not_an_image["error"]["type"].endswith(":invalid-image")
    assert forward_passes(tmp_path / "worker.log") == 20

    uploads = [ObjectLocation.parse(job.image) for job in store.get_jobs([job["id"] for job in by_upload])]
    assert all(isinstance(outcome, ObjectUnreadable) for outcome in objects.get_many(uploads))  # deleted: done
    assert objects.get_many(archive) == [path.read_bytes() for path in radiographs[:4]]  # never the client's
    store.close()


def test_the_images_of_expired_jobs_leave_the_bucket_within_a_sweep(
        object_store: SeaweedFS, redis_database: str, radiographs: list[Path], tmp_path: Path):
    folder = ObjectLocation(BUCKET, f"test-{uuid.uuid4().hex}")
    api, url = start_api(tmp_path / "api.log", REDIS_URL=redis_database, IMAGE_STORE=str(folder), JOB_TTL="2",
                         SWEEP_INTERVAL=str(SWEEP_INTERVAL), **object_store.env)  # no worker: nothing finishes
    objects = ObjectStore(endpoint=object_store.endpoint)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            submitted = client.post("/jobs", files=[("files", (path.name, path.read_bytes()))
                                                    for path in radiographs[:3]]).json()
        written = [folder.child(f"{submitted['batch_id']}/{n:06d}") for n in range(3)]
        assert objects.get_many(written) == [path.read_bytes() for path in radiographs[:3]]

        wait_until(lambda: all(isinstance(outcome, ObjectUnreadable) for outcome in objects.get_many(written)),
                   timeout=2 + 2 * SWEEP_INTERVAL + 2, interval=0.2, what="the expired jobs' images to be deleted")
    finally:
        stop(api)


def test_jobs_wait_for_an_object_store_that_went_away_and_run_once_it_is_back(
        redis_database: str, radiographs: list[Path], tmp_path: Path):
    store_server = SeaweedFS(tmp_path / "seaweedfs")
    store_server.start()
    folder = ObjectLocation(BUCKET, "outage")
    settings = {"REDIS_URL": redis_database, "IMAGE_STORE": str(folder), "SWEEP_INTERVAL": str(SWEEP_INTERVAL),
                **store_server.env}
    api, url = start_api(tmp_path / "api.log", **settings)
    worker: subprocess.Popen | None = None
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            submitted = client.post("/jobs", files={"files": ("study.zip", zipped(radiographs, 16, "x"))}).json()
            store_server.stop()
            worker = start_worker(tmp_path / "worker.log", **settings)
            wait_until(lambda: "the object store does not answer" in (tmp_path / "worker.log").read_text(),
                       timeout=60, what="the worker to find the store away")
            store_server.start()  # the same data folder: the images are all there
            batch = finished_batch(client, submitted["batch_id"])
    finally:
        stop(api)
        if worker is not None:
            stop(worker)
        store_server.stop()

    assert batch["counts"]["succeeded"] == 16
    assert forward_passes(tmp_path / "worker.log") == 16
    jobs = JobStore(redis_database, ttl=600).get_jobs([job["id"] for job in batch["jobs"]])
    assert all(job.deliveries == 1 for job in jobs)  # waiting for the store cost no delivery


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis of 40 MB that evicts nothing, as a small managed Redis runs: the URL of its database 0."""
    port = free_port()
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                    "--appendonly", "no", "--maxmemory", "40mb", "--maxmemory-policy", "noeviction",
                    "--dir", str(tmp_path)], check=True, stdout=subprocess.DEVNULL)
    wait_until(lambda: _answers(port), timeout=10, what="redis-server to start")
    yield f"redis://127.0.0.1:{port}/0"
    Redis(port=port).shutdown(nosave=True)


def _answers(port: int) -> bool:
    try:
        return bool(Redis(port=port, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


@pytest.mark.parametrize("image_store", ["redis", "s3"])
def test_a_full_redis_refuses_what_would_not_fit_and_takes_it_once_drained(
        image_store: str, small_redis: str, object_store: SeaweedFS, radiographs: list[Path], tmp_path: Path):
    """Two uploads of 120 radiographs (about 22 MB each) into a Redis of 40 MB (a budget of 36): the second cannot
    fit beside the first while the first waits, unless the images go to the bucket."""
    settings = {"REDIS_URL": small_redis, "SWEEP_INTERVAL": str(SWEEP_INTERVAL), **object_store.env,
                **({"IMAGE_STORE": f"s3://{BUCKET}/full-{uuid.uuid4().hex}"} if image_store == "s3" else {})}
    api, url = start_api(tmp_path / "api.log", **settings)
    worker: subprocess.Popen | None = None
    first, second = zipped(radiographs, 120, "first"), zipped(radiographs, 120, "second")
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            accepted = client.post("/jobs", files={"files": ("first.zip", first)})
            assert accepted.status_code == 202, accepted.text
            refused = client.post("/jobs", files={"files": ("second.zip", second)})  # no worker yet: nothing drains
            gauges = {sample.name: sample.value for family in text_string_to_metric_families(
                client.get("/metrics").text) for sample in family.samples}
            worker = start_worker(tmp_path / "worker.log", **settings)
            assert finished_batch(client, accepted.json()["batch_id"])["counts"]["succeeded"] == 120
            if image_store == "redis":
                assert refused.status_code == 429, refused.text
                assert refused.json()["type"].endswith(":store-full") and refused.headers["retry-after"] == "30"
                budget = int(0.9 * 40 * 1024 * 1024)  # 90% of maxmemory
                assert client.get("/readyz").json()["redis"]["budget_bytes"] == budget
                assert gauges["pneuradnet_redis_budget_bytes"] == budget
                assert 20e6 < gauges["pneuradnet_redis_used_bytes"] < budget  # the first upload waited there
                refused = client.post("/jobs", files={"files": ("second.zip", second)})  # drained: it fits now
            assert refused.status_code == 202, refused.text
            assert finished_batch(client, refused.json()["batch_id"])["counts"]["succeeded"] == 120
    finally:
        stop(api)
        if worker is not None:
            stop(worker)
    assert forward_passes(tmp_path / "worker.log") == 240


def test_submit_names_a_folder_of_the_bucket_and_writes_a_row_per_object(
        object_store: SeaweedFS, redis_database: str, radiographs: list[Path], tmp_path: Path):
    folder = ObjectLocation(BUCKET, f"test-{uuid.uuid4().hex}")
    settings = {"REDIS_URL": redis_database, "IMAGE_SOURCES": f"{folder}/", **object_store.env}
    objects = ObjectStore(endpoint=object_store.endpoint)
    objects.put_many([(folder.child(f"scans/{path.name}"), path.read_bytes()) for path in radiographs[:5]])
    worker = start_worker(tmp_path / "worker.log", **settings)
    api, url = start_api(tmp_path / "api.log", **settings)
    out = tmp_path / "results.csv"
    try:
        command = [sys.executable, "-m", "pneuradnet.cli", "submit", f"{folder}/scans/", "--api", url, "--out", out]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    finally:
        stop(api)
        stop(worker)

    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert [row["filename"] for row in rows] == [f"{folder}/scans/{path.name}" for path in radiographs[:5]]
    assert [row["status"] for row in rows] == ["succeeded"] * 5
    assert (tmp_path / "results.csv.state.json").exists()  # a rerun resumes: nothing is submitted twice


def test_redis_out_of_memory_mid_upload_is_a_429_and_strands_nothing(small_redis: str, radiographs: list[Path],
                                                                      tmp_path: Path):
    """With the byte budget out of the way, the second upload fills Redis to its maxmemory in the middle of its
    admission: it is refused as store-full, its jobs stored so far are withdrawn and their images deleted, and the
    first upload is untouched."""
    api, url = start_api(tmp_path / "api.log", REDIS_URL=small_redis, REDIS_BUDGET_BYTES=str(10**12))
    redis = Redis.from_url(small_redis)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            first = client.post("/jobs", files={"files": ("first.zip", zipped(radiographs, 120, "first"))})
            refused = client.post("/jobs", files={"files": ("second.zip", zipped(radiographs, 120, "second"))})
            assert first.status_code == 202, first.text
            assert refused.status_code == 429, refused.text
            assert refused.json()["type"].endswith(":store-full") and refused.headers["retry-after"] == "30"
            batches = [key for key in redis.scan_iter("pneuradnet:batch:*") if key.count(b":") == 2]
            assert len(batches) == 2  # the refused one keeps its (withdrawn) record only
            withdrawn = next(key for key in batches if key != f"pneuradnet:batch:{first.json()['batch_id']}".encode())
            counts = redis.hgetall(withdrawn)
            assert int(counts.get(b"queued", 0)) == 0 and int(counts.get(b"running", 0)) == 0
            assert redis.zcard("pneuradnet:registry:queued") == 120  # the first upload's jobs, and only those
            assert redis.hlen("pneuradnet:admissions") == 0 and redis.hlen("pneuradnet:admissions:bytes") == 0
            assert len(list(redis.scan_iter("pneuradnet:job:*:image"))) == 120
    finally:
        stop(api)
