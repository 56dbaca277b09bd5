"""Bulk at the speed of the model: `.venv/bin/python -m bench.bulk` uploads one ZIP of N real radiographs (600 by
default: the package's 16, each under many names) in one request, and measures, on a Redis database of its own:

- the time to the `202`, and to the first result (the first job of the batch to succeed, seen on the batch's
  channel), from the request's start;
- end-to-end images/s, upload included (sent by the project's own client), as a ratio to the in-process limit
  measured in this process on the same images just before and just after each request, averaged (this shared
  machine's speed drifts from one minute to the next);
- the API's peak RSS and Redis' peak memory during the runs;
- single-image latency (submit, then long-poll) against classifying one image in this process;
- per chunk, from the workers' own histograms (/metrics): the time from a task's start to its forward pass
  (claiming, reading and decoding), the forward pass, and the worker's wait between one chunk and the next.

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
import zipfile
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from redis.client import PubSub

from bench.compute import cpu_model, cpu_peak
from bench.inprocess import bulk_images_per_second
from pneuradnet.classifier import Classifier
from pneuradnet.client import Client
from pneuradnet.manifest import MODEL_CACHE_DIR
from tests.processes import start_api, start_worker, stop

RADIOGRAPHS = "pneumonia_model_package/datasets/pneumonia-data/val"
BENCH_DB = 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--singles", type=int, default=20, help="single-image latencies measured")
    parser.add_argument("--json", type=Path, default=Path("bench-bulk.json"))
    args = parser.parse_args()

    radiographs = sorted(Path(importlib.metadata.distribution("pneumonia-model-package")
                              .locate_file(RADIOGRAPHS)).glob("*.jpeg"))
    items = [(f"study/{n:04d}-{radiographs[n % len(radiographs)].name}", radiographs[n % len(radiographs)].read_bytes())
             for n in range(args.images)]
    archive = _zip(items)
    report = {"machine": _machine(), "images": args.images, "archive_mb": len(archive) / 2**20,
              **_measure(items, archive, radiographs, args)}
    args.json.write_text(json.dumps(report, indent=2))
    for key, value in report.items():
        print(f"{key:42} {value if not isinstance(value, float) else round(value, 3)}")


def _measure(items: list[tuple[str, bytes]], archive: bytes, radiographs: list[Path],
             args: argparse.Namespace) -> dict[str, object]:
    redis_url = f"redis://127.0.0.1:6379/{BENCH_DB}"
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    env = {**os.environ, "REDIS_URL": redis_url, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    logs = Path(tempfile.mkdtemp(prefix="pneuradnet-bench-bulk-"))
    local = Classifier.load("default", runtime="onnxruntime", cache_dir=MODEL_CACHE_DIR)
    local.warm_up()
    api, url = start_api(logs / "api.log", env)
    worker = start_worker(logs / "worker.log", env)
    try:
        with httpx.Client(base_url=url, timeout=300) as client, Client(url, timeout=300) as service:
            _upload(client, service, redis, _zip(items[:32]))  # the service's warm-up: first batches, connections
            runs = []
            for _ in range(args.runs):
                before = bulk_images_per_second(local, items)
                run = _upload(client, service, redis, archive)
                # The limit measured just before and just after the request: the machine's drift meanwhile averages out.
                limit = (before + bulk_images_per_second(local, items)) / 2
                runs.append({**run, "in_process_images_per_second": limit})
            singles = [_single(client, radiographs[n % len(radiographs)]) for n in range(args.singles)]
            local_singles = [_local_single(local, radiographs[n % len(radiographs)]) for n in range(args.singles)]
        redis_peak = max(run["redis_peak_mb"] for run in runs)
        return {
            "seconds_to_202": statistics.median(run["seconds_to_202"] for run in runs),
            "seconds_to_first_result": statistics.median(run["seconds_to_first_result"] for run in runs),
            "end_to_end_images_per_second": statistics.median(run["images_per_second"] for run in runs),
            "in_process_images_per_second": statistics.median(run["in_process_images_per_second"] for run in runs),
            "ratio_to_in_process": statistics.median(run["images_per_second"] / run["in_process_images_per_second"]
                                                     for run in runs),
            "api_peak_rss_mb": _peak_rss_mb(api.pid),
            "redis_peak_used_mb": redis_peak,
            **{key: statistics.median(run[key] for run in runs) for key in runs[0] if key.startswith("mean_")},
            "single_p50_ms": statistics.median(singles),
            "in_process_single_p50_ms": statistics.median(local_singles),
            "runs": runs,
        }
    finally:
        stop(worker)
        stop(api)
        redis.flushdb()


def _upload(client: httpx.Client, service: Client, redis: Redis, archive: bytes) -> dict[str, float]:
    """One request with the whole archive, sent by the project's client as `pneuradnet submit` sends it: when the
    202 came, when the batch's first job succeeded, when all had."""
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
    started = time.perf_counter()
    batch_id = service.submit([("study.zip", archive)]).batch_id
    accepted = time.perf_counter() - started
    while "retry-after" in (batch := client.get(f"/batches/{batch_id}", params={"wait": 30})).headers:
        pass
    finished = time.perf_counter() - started
    done.set()
    after = _histograms(client)
    listener.join()
    sampler.join()
    pubsub.close()
    total = batch.json()["total"]
    assert batch.json()["counts"]["succeeded"] == total, batch.json()["counts"]
    channel = f"pneuradnet:batch:{batch_id}:events"
    first = min(moment for moment, name in events if name == channel) - started
    per_chunk = {f"mean_{name}_ms": 1000 * (after[name][0] - before[name][0])
                 / max(1.0, after[name][1] - before[name][1]) for name in HISTOGRAMS}
    return {"seconds_to_202": accepted, "seconds_to_first_result": first, "seconds": finished,
            "images_per_second": total / finished, "redis_peak_mb": max(memory, default=0.0), **per_chunk}


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
    while not done.is_set():
        message = pubsub.get_message(timeout=0.05)
        if message and message["data"] == b"succeeded":
            events.append((time.perf_counter(), message["channel"].decode()))


def _sample_memory(redis: Redis, memory: list[float], done: threading.Event) -> None:
    while not done.wait(0.05):
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
