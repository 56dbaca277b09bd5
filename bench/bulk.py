"""Bulk at the speed of the model: `.venv/bin/python -m bench.bulk` uploads one ZIP of N real radiographs (600 by
default: the package's 16, each under many names) in one request (or in ZIPs of MAX_FILES_PER_REQUEST each, past
it), and measures, on a Redis database of its own:

- the time to the `202`, and to the first result (the first job of the batch to succeed, seen on the batch's
  channel), from the request's start;
- end-to-end images/s, upload included (sent by the project's own client), as a ratio to the in-process limit
  measured in this process on the same images just before and just after each request, averaged (this shared
  machine's speed drifts from one minute to the next); with WORKER_CONCURRENCY above 1, also to the same limit laid
  out as the worker is: that many processes of WORKER_THREADS classifying at once;
- the API's peak RSS and Redis' peak memory during the runs;
- single-image latency (submit, then long-poll) against classifying one image in this process;
- per chunk, from the workers' own histograms (/metrics): the time from a task's start to its forward pass
  (claiming, reading and decoding), the forward pass, and the worker's wait between one chunk and the next;
- where the cores went: CPU milliseconds per image of the worker (its pool processes included), the API, Redis,
  the bucket's server and this benchmark's own client during a run, and of the in-process loop.

With `--store s3`, the service keeps the uploaded images in an S3-compatible bucket (a SeaweedFS the benchmark
starts on loopback: IMAGE_STORE); with `--store reference`, the images are put in the bucket first and submitted by
reference, one request naming their folder (IMAGE_SOURCES). Either also reports what a waiting job costs Redis,
with its image in Redis and in the bucket (`memory_per_waiting_job`).

Medians of --runs runs. Run it on a quiet machine: nothing else should be using the cores.
"""

import argparse
import importlib.metadata
import io
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from redis.client import PubSub

from bench.compute import cpu_model, cpu_peak
from bench.cpu import cpu_seconds
from bench.inprocess import bulk_images_per_second, parallel_images_per_second
from pneuradnet.classifier import Classifier
from pneuradnet.client import Client
from pneuradnet.manifest import MODEL_CACHE_DIR
from service.imagestore import ObjectLocation, ObjectStore
from service.settings import Settings
from tests.objectstore import SeaweedFS
from tests.processes import start_api, start_worker, stop

RADIOGRAPHS = "pneumonia_model_package/datasets/pneumonia-data/val"
BENCH_DB = 12


STORES = ("redis", "s3", "reference")
"""Where the images wait: in Redis, uploaded to a bucket (IMAGE_STORE), or in a bucket already (IMAGE_SOURCES)."""

FILES_PER_REQUEST = 1000
"""Images per upload request (MAX_FILES_PER_REQUEST's default): a larger bulk is sent as several ZIPs."""

WAITING_JOBS_MEASURED = 200
"""Jobs submitted, with no worker, to measure what a waiting job costs Redis."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--singles", type=int, default=20, help="single-image latencies measured")
    parser.add_argument("--store", choices=STORES, default="redis", help="where the images wait (see above)")
    parser.add_argument("--json", type=Path, default=Path("bench-bulk.json"))
    args = parser.parse_args()

    radiographs = sorted(Path(importlib.metadata.distribution("pneumonia-model-package")
                              .locate_file(RADIOGRAPHS)).glob("*.jpeg"))
    items = [(f"study/{n:04d}-{radiographs[n % len(radiographs)].name}", radiographs[n % len(radiographs)].read_bytes())
             for n in range(args.images)]
    report = {"machine": _machine(), "images": args.images, "store": args.store,
              "images_mb": sum(len(data) for _, data in items) / 2**20, **_measure(items, radiographs, args)}
    args.json.write_text(json.dumps(report, indent=2))
    for key, value in report.items():
        print(f"{key:42} {value if not isinstance(value, float) else round(value, 3)}")


def _measure(items: list[tuple[str, bytes]], radiographs: list[Path], args: argparse.Namespace) -> dict[str, object]:
    redis_url = f"redis://127.0.0.1:6379/{BENCH_DB}"
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    env = {**os.environ, "REDIS_URL": redis_url, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    logs = Path(tempfile.mkdtemp(prefix="pneuradnet-bench-bulk-"))
    bucket = SeaweedFS(logs / "seaweedfs") if args.store != "redis" else None
    folder = ObjectLocation("bench", f"bulk-{uuid.uuid4().hex}")
    if bucket is not None:
        bucket.start()
        env |= bucket.env
        os.environ.update(bucket.env)  # this process puts the images a reference names
        env |= {"IMAGE_STORE": str(folder.child("uploads"))} if args.store == "s3" else {"IMAGE_SOURCES": f"{folder}/"}
    local = Classifier.load("default", runtime="onnxruntime", cache_dir=MODEL_CACHE_DIR)
    local.warm_up()
    layout = Settings()  # the worker's processes and threads, from the same environment
    spread = layout.worker_concurrency > 1  # else the in-process limit is laid out as the worker already

    def same_layout() -> float:
        return parallel_images_per_second(radiographs, len(items), processes=layout.worker_concurrency,
                                          threads=layout.inference_threads)

    api, url = start_api(logs / "api.log", env)
    try:
        with httpx.Client(base_url=url, timeout=300) as client, Client(url, timeout=300) as service:
            submit = _submitter(service, items, args.store, folder, bucket)
            sample = items[:WAITING_JOBS_MEASURED]
            submit_sample = _submitter(service, sample, args.store, folder, bucket)
            # Measured the second time: the first request loads the job store's scripts into Redis, which counts
            # them in its used_memory (about 3 KB a job of a first 200).
            _memory_per_waiting_job(client, redis, submit_sample, len(sample))
            per_waiting_job = _memory_per_waiting_job(client, redis, submit_sample, len(sample))
            worker = start_worker(logs / "worker.log", env)
            try:
                processes = {"worker": worker.pid, "api": api.pid, "redis": int(redis.info("server")["process_id"]),
                             "benchmark_client": os.getpid(), **({"object_store": bucket.pid} if bucket else {})}
                _upload(client, service, redis, _submitter(service, items[:32], "redis", folder, None), processes)
                runs = []
                for _ in range(args.runs):
                    cpu_before = time.process_time()
                    before = bulk_images_per_second(local, items)
                    in_process_cpu_ms = 1000 * (time.process_time() - cpu_before) / len(items)
                    same_layout_before = same_layout() if spread else 0.0
                    run = _upload(client, service, redis, submit, processes)
                    # The limit just before and just after the request: the machine's drift meanwhile averages out.
                    limit = (before + bulk_images_per_second(local, items)) / 2
                    runs.append({**run, "in_process_images_per_second": limit,
                                 "cpu_ms_per_image_in_process": in_process_cpu_ms,
                                 **({"in_process_same_layout_images_per_second":
                                     (same_layout_before + same_layout()) / 2} if spread else {})})
                singles = [_single(client, radiographs[n % len(radiographs)]) for n in range(args.singles)]
                local_singles = [_local_single(local, radiographs[n % len(radiographs)]) for n in range(args.singles)]
            finally:
                stop(worker)
        return {
            "seconds_to_202": statistics.median(run["seconds_to_202"] for run in runs),
            "seconds_to_first_result": statistics.median(run["seconds_to_first_result"] for run in runs),
            "end_to_end_images_per_second": statistics.median(run["images_per_second"] for run in runs),
            "in_process_images_per_second": statistics.median(run["in_process_images_per_second"] for run in runs),
            "ratio_to_in_process": statistics.median(run["images_per_second"] / run["in_process_images_per_second"]
                                                     for run in runs),
            **({"in_process_same_layout_images_per_second": statistics.median(
                    run["in_process_same_layout_images_per_second"] for run in runs),
                "ratio_to_same_layout": statistics.median(
                    run["images_per_second"] / run["in_process_same_layout_images_per_second"] for run in runs)}
               if spread else {}),
            "api_peak_rss_mb": _peak_rss_mb(api.pid),
            "redis_peak_used_mb": max(run["redis_peak_mb"] for run in runs),
            "redis_bytes_per_waiting_job": per_waiting_job,
            **{key: statistics.median(run[key] for run in runs) for key in runs[0]
               if key.startswith(("mean_", "cpu_ms_per_image"))},
            "single_p50_ms": statistics.median(singles),
            "in_process_single_p50_ms": statistics.median(local_singles),
            "runs": runs,
        }
    finally:
        stop(api)
        if bucket is not None:
            bucket.stop()
        redis.flushdb()


def _submitter(service: Client, items: list[tuple[str, bytes]], store: str, folder: ObjectLocation,
               bucket: SeaweedFS | None) -> Callable[[], list[str]]:
    """What submits the images, as a client would, and answers the ids of the batches: ZIPs uploaded (in requests
    of FILES_PER_REQUEST), or, for references, one request naming the folder they were put in."""
    if store == "reference":
        assert bucket is not None
        objects = ObjectStore(endpoint=bucket.endpoint)
        archive = folder.child(f"archive-{uuid.uuid4().hex}/")
        objects.put_many([(archive.child(name), data) for name, data in items])
        return lambda: [service.submit_references(prefix=str(archive)).batch_id]
    archives = [_zip(items[start:start + FILES_PER_REQUEST]) for start in range(0, len(items), FILES_PER_REQUEST)]
    return lambda: [service.submit([(f"part-{n}.zip", archive)]).batch_id for n, archive in enumerate(archives)]


def _memory_per_waiting_job(client: httpx.Client, redis: Redis, submit: Callable[[], list[str]], count: int) -> float:
    """What a waiting job costs Redis, its image included when it is kept there: `count` jobs submitted with no
    worker running (`submit` sends them), then canceled."""
    before = int(redis.info("memory")["used_memory"])
    (batch_id,) = submit()
    waiting = int(redis.info("memory")["used_memory"]) - before
    client.delete(f"/batches/{batch_id}")
    return waiting / count


def _upload(client: httpx.Client, service: Client, redis: Redis, submit: Callable[[], list[str]],
            processes: dict[str, int]) -> dict[str, float]:
    """The images submitted (`submit`) by the project's client as `pneuradnet submit` sends them: when the last 202
    came, when the first job succeeded, when all had; and the CPU each of `processes` used meanwhile, per image."""
    events: list[tuple[float, str]] = []
    memory: list[float] = []
    done = threading.Event()
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("pneuradnet:batch:*:events")
    listener = threading.Thread(target=_listen, args=(pubsub, events, done))
    sampler = threading.Thread(target=_sample_memory, args=(redis, memory, done))
    listener.start()
    sampler.start()
    before = _histograms(client)
    cpu_before = cpu_seconds(processes)
    started = time.perf_counter()
    batch_ids = submit()
    accepted = time.perf_counter() - started
    total = 0
    for batch_id in batch_ids:
        while "retry-after" in (batch := client.get(f"/batches/{batch_id}", params={"wait": 30})).headers:
            pass
        assert batch.json()["counts"]["succeeded"] == batch.json()["total"], batch.json()["counts"]
        total += batch.json()["total"]
    finished = time.perf_counter() - started
    cpu = {f"cpu_ms_per_image_{name}": 1000 * (used - cpu_before[name]) / total
           for name, used in cpu_seconds(processes).items()}
    done.set()
    after = _histograms(client)
    listener.join()
    sampler.join()
    pubsub.close()
    (first_moment, channel), = events
    assert channel in {f"pneuradnet:batch:{batch_id}:events" for batch_id in batch_ids}, channel
    first = first_moment - started
    per_chunk = {f"mean_{name}_ms": 1000 * (after[name][0] - before[name][0])
                 / max(1.0, after[name][1] - before[name][1]) for name in HISTOGRAMS}
    return {"seconds_to_202": accepted, "seconds_to_first_result": first, "seconds": finished,
            "images_per_second": total / finished, "redis_peak_mb": max(memory, default=0.0), **per_chunk, **cpu,
            "cpu_ms_per_image_total": sum(cpu.values())}


HISTOGRAMS = ("preparation_seconds", "inference_seconds", "between_tasks_seconds")
"""The workers' histograms whose mean per chunk is reported (service/metrics.py)."""


def _histograms(client: httpx.Client) -> dict[str, tuple[float, float]]:
    """Sum and count of each of HISTOGRAMS, as the API's /metrics shows them now."""
    found = {name: [0.0, 0.0] for name in HISTOGRAMS}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        name = family.name.removeprefix("pneuradnet_")
        for sample in family.samples if name in found else ():
            if sample.name.endswith("_sum"):
                found[name][0] = sample.value
            elif sample.name.endswith("_count"):
                found[name][1] = sample.value
    return {name: (total, count) for name, (total, count) in found.items()}


def _listen(pubsub: PubSub, events: list[tuple[float, str]], done: threading.Event) -> None:
    """Note the first job to succeed, and stop listening: hearing the thousands after it costs the cores the
    service is measured on."""
    while not done.is_set():
        message = pubsub.get_message(timeout=0.05)
        if message and message["data"] == b"succeeded":
            events.append((time.perf_counter(), message["channel"].decode()))
            pubsub.punsubscribe()
            return


MEMORY_SAMPLED_EVERY = 0.1
"""Seconds between two readings of Redis' used_memory: often enough for its peak, rarely enough that this
benchmark's own work takes little from the cores the service is measured on."""


def _sample_memory(redis: Redis, memory: list[float], done: threading.Event) -> None:
    while not done.wait(MEMORY_SAMPLED_EVERY):
        memory.append(int(redis.info("memory")["used_memory"]) / 2**20)


def _single(client: httpx.Client, path: Path) -> float:
    started = time.perf_counter()
    (job,) = client.post("/jobs", files={"files": (path.name, path.read_bytes())}).json()["jobs"]
    while client.get(f"/jobs/{job['id']}", params={"wait": 30}).json()["status"] in ("queued", "running"):
        pass
    return (time.perf_counter() - started) * 1000


def _local_single(classifier: Classifier, path: Path) -> float:
    started = time.perf_counter()
    classifier.classify([(path.name, path.read_bytes())])
    return (time.perf_counter() - started) * 1000


def _zip(items: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in items:
            archive.writestr(name, data)
    return buffer.getvalue()


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _machine() -> dict[str, object]:
    peak = cpu_peak(os.cpu_count() or 1, runs=1)
    return {"cpu": cpu_model(), "instruction_set": peak.instruction_set if peak else "unknown (no C compiler)",
            "cores": os.cpu_count()}


if __name__ == "__main__":
    main()
