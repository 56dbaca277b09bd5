"""The benchmark: `.venv/bin/python -m bench.run` starts what it needs, prints a table and writes it as JSON.

Measured in one run, on a Redis database of its own (REDIS_URL's host, database 12):
1. the in-process limit of each runtime (bench/inprocess.py), TensorFlow with oneDNN on and off;
2. end to end: N radiographs in one bulk request, long-polled until all are done, each time right after the same
   images classified in this process by the serving runtime (the in-process limit, measured alongside so that
   the ratio of the two does not depend on how fast this shared machine happens to be that minute);
3. the original design's path: one synchronous POST /predict/ at a time;
4. single-image latency, submit to result with long-poll, p50 and p95;
5. peak RSS of the API and of a worker's model process, and a worker's cold start;
6. the extra time of an explained job (Grad-CAM heatmap): single images submitted with and without explain,
   alternating, mean difference; the first explained job, which loads TensorFlow and the model, apart;
7. the ceiling (bench/compute.py): the model's multiply-accumulates per image and the CPU's peak rate (with the
   instruction set it was measured with, after `pytest -m bench` has checked the program measuring it), so that
   each runtime's inference speed reads as a share of what the hardware can do.
Run it on a quiet machine: nothing else should be using the cores.
The lanes (issue 15: interactive latency behind a bulk, bulk throughput with interactive traffic) have their own
benchmark: `.venv/bin/python -m bench.lanes` (BENCHMARKS.md, "Lanes").
The fault campaign (a seeded nemesis against real processes, then an invariant checker) has its own too:
`.venv/bin/python -m bench.chaos --minutes 30` (it prints its seed; `--seed S` replays what it decides).
"""

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from redis import Redis

from bench.compute import cpu_model, cpu_peak, multiply_accumulates_per_image
from bench.inprocess import bulk_images_per_second
from pneuradnet.classifier import Classifier
from pneuradnet.conversion import onnx_model_for
from pneuradnet.manifest import load_manifest, resolve_model_file
from service.keys import worker_key
from service.settings import Settings
from tests.processes import ROOT, start_api, start_worker, stop, wait_until

RADIOGRAPHS = "pneumonia_model_package/datasets/pneumonia-data/val"
BENCH_DB = 12

REPEATS = 5
"""Bulk measurements behind each throughput figure, in-process and end to end; the median is reported (the same
measurement varies by up to 10-15% from one run to the next on a shared 2-core virtual machine)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images in the bulk request (the 16 repeated)")
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--sync-images", type=int, default=32, help="images sent one POST /predict/ at a time")
    parser.add_argument("--explain-runs", type=int, default=10,
                        help="single images submitted with explain (and as many without); 0: not measured")
    parser.add_argument("--runtime", default=Settings().inference_runtime,
                        help="the runtime the workers serve with")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()

    folder = Path(importlib.metadata.distribution("pneumonia-model-package").locate_file(RADIOGRAPHS))
    radiographs = sorted(folder.glob("*.jpeg"))
    images = [radiographs[n % len(radiographs)] for n in range(args.images)]
    cache_dir = Path(os.environ.get("MODEL_CACHE_DIR", ROOT / ".cache" / "models"))

    if shutil.which("gcc") or shutil.which("cc"):  # the peak program's own tests first (pytest -m bench): a peak
        # measured wrong, or with the wrong instruction set, would skew every share of the peak below
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "bench", "tests/bench"], cwd=ROOT, check=True)
    report: dict = {"machine": _machine(), "images": args.images, "serving_runtime": args.runtime}
    report["in_process"] = {
        "tensorflow (oneDNN on)": _in_process(images, "tensorflow", cache_dir, TF_ENABLE_ONEDNN_OPTS="1"),
        "tensorflow (oneDNN off)": _in_process(images, "tensorflow", cache_dir, TF_ENABLE_ONEDNN_OPTS="0"),
        "onnxruntime": _in_process(images, "onnxruntime", cache_dir),
    }
    report["compute"] = _compute(cache_dir)
    report["service"] = _service(images, radiographs, args, cache_dir)
    limit = report["in_process"]["onnxruntime" if args.runtime == "onnxruntime" else "tensorflow (oneDNN on)"]
    report["service"]["single_p50_minus_in_process_ms"] = report["service"]["single_latency_p50_ms"] - \
        limit["single_image_ms"]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(_table(report))
    print(f"\nwritten to {args.out}")


def _in_process(images: list[Path], runtime: str, cache_dir: Path, **env: str) -> dict:
    command = [sys.executable, "-m", "bench.inprocess", *map(str, images), "--runtime", runtime,
               "--cache-dir", str(cache_dir), "--repeats", str(REPEATS)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env})
    return json.loads(run.stdout.splitlines()[-1])


def _compute(cache_dir: Path) -> dict:
    onnx_file = onnx_model_for(resolve_model_file(load_manifest("default")), cache_dir=cache_dir,
                               convert_if_missing=False)
    peak = cpu_peak(os.cpu_count() or 1)  # FMA_PEAK_ISA in the environment forces an instruction set
    return {"multiply_accumulates_per_image": multiply_accumulates_per_image(onnx_file),
            "cpu_peak_multiply_accumulates_per_second": peak.multiply_accumulates_per_second if peak else None,
            "cpu_peak_instruction_set": peak.instruction_set if peak else None,
            "cpu_model": cpu_model()}


def _service(images: list[Path], radiographs: list[Path], args: argparse.Namespace, cache_dir: Path) -> dict:
    redis_url = f"redis://127.0.0.1:6379/{BENCH_DB}"
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    env = {**os.environ, "REDIS_URL": redis_url, "TF_CPP_MIN_LOG_LEVEL": "2", "INFERENCE_RUNTIME": args.runtime,
           "MODEL_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    logs = Path(tempfile.mkdtemp(prefix="pneuradnet-bench-"))
    api, url = start_api(logs / "api.log", env)
    started = time.monotonic()
    worker = start_worker(logs / "worker.log", env)
    wait_until(lambda: any(redis.scan_iter(worker_key("*"))), timeout=120, what="the worker to announce itself")
    cold_start = time.monotonic() - started
    model_pid = int(next(redis.scan_iter(worker_key("*"))).decode().rsplit(":", 1)[1])
    local = Classifier.load("default", runtime=args.runtime, cache_dir=cache_dir)
    local.warm_up()
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            _bulk(client, images[:16])  # the service's own warm-up: first batches, connections
            items = [(path.name, path.read_bytes()) for path in images]
            pairs = [(bulk_images_per_second(local, items), _bulk(client, images)) for _ in range(REPEATS)]
            sync = _sync(client, images[:args.sync_images])
            latencies = sorted(_single(client, radiographs[n % len(radiographs)]) for n in range(args.latency_runs))
            peak_before_explain = _peak_rss_mb(model_pid)
            explained = _explain_overhead(client, radiographs, args.explain_runs) if args.explain_runs else {}
        return {
            "bulk_images_per_second": statistics.median(service for _, service in pairs),
            "in_process_alongside_images_per_second": statistics.median(limit for limit, _ in pairs),
            "bulk_ratio_to_in_process": statistics.median(service / limit for limit, service in pairs),
            "sync_predict_images_per_second": sync,
            "single_latency_p50_ms": statistics.median(latencies),
            "single_latency_p95_ms": latencies[int(0.95 * (len(latencies) - 1))],
            "api_peak_rss_mb": _peak_rss_mb(api.pid),
            "worker_model_process_peak_rss_mb": peak_before_explain,
            "worker_parent_peak_rss_mb": _peak_rss_mb(worker.pid),
            "worker_cold_start_seconds": cold_start,
            **explained,
            **({"worker_model_process_peak_rss_with_explainer_mb": _peak_rss_mb(model_pid)} if explained else {}),
        }
    finally:
        stop(worker)
        stop(api)
        redis.flushdb()


def _bulk(client: httpx.Client, images: list[Path]) -> float:
    started = time.perf_counter()
    batch_id = client.post("/jobs", files=[("files", (p.name, p.read_bytes())) for p in images]).json()["batch_id"]
    while "retry-after" in (answer := client.get(f"/batches/{batch_id}", params={"wait": 30})).headers:
        pass  # a long-poll of the whole batch: answered as soon as its last job finishes
    elapsed = time.perf_counter() - started
    assert answer.json()["counts"]["succeeded"] == len(images)
    return len(images) / elapsed


def _sync(client: httpx.Client, images: list[Path]) -> float:
    started = time.perf_counter()
    for path in images:
        client.post("/predict/", files={"file": (path.name, path.read_bytes())}).raise_for_status()
    return len(images) / (time.perf_counter() - started)


def _single(client: httpx.Client, path: Path, *, explain: bool = False) -> float:
    started = time.perf_counter()
    params = {"explain": "true"} if explain else {}
    (job,) = client.post("/jobs", params=params, files={"files": (path.name, path.read_bytes())}).json()["jobs"]
    while (finished := client.get(f"/jobs/{job['id']}", params={"wait": 30}).json())["status"] in ("queued", "running"):
        pass  # only the first explained job, which loads TensorFlow in the worker, may take longer than 30 s
    assert finished["status"] == "succeeded"
    assert not explain or finished["result"]["heatmap_url"], finished["result"].get("explanation_error")
    return (time.perf_counter() - started) * 1000


def _explain_overhead(client: httpx.Client, radiographs: list[Path], runs: int) -> dict:
    """Single images with and without explain, alternating: the mean extra time of an explained one."""
    first = _single(client, radiographs[0], explain=True)
    plain, explained = [], []
    for n in range(runs):
        path = radiographs[n % len(radiographs)]
        plain.append(_single(client, path))
        explained.append(_single(client, path, explain=True))
    return {"explain_first_job_ms": first, "explain_single_mean_ms": statistics.mean(explained),
            "plain_single_mean_ms": statistics.mean(plain),
            "explain_extra_ms_per_image": statistics.mean(explained) - statistics.mean(plain)}


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _machine() -> dict:
    return {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "model": "default (xception-pneumonia 0.3.0)"}


def _table(report: dict) -> str:
    compute = report["compute"]
    peak = compute["cpu_peak_multiply_accumulates_per_second"]
    rows = [("in-process limit", "images/s (batch 16)", "single image ms", "inference only: images/s (16)",
             "inference only: single ms", "share of CPU peak (16)", "peak RSS MB", "load s")]
    for name, measured in report["in_process"].items():
        rate = measured["inference_only_images_per_second"] * compute["multiply_accumulates_per_image"]
        rows.append((name, f"{measured['images_per_second']:.1f}", f"{measured['single_image_ms']:.1f}",
                     f"{measured['inference_only_images_per_second']:.1f}",
                     f"{measured['inference_only_single_ms']:.1f}", f"{rate / peak:.0%}" if peak else "-",
                     f"{measured['peak_rss_mb']:.0f}", f"{measured['load_and_warm_up_seconds']:.1f}"))
    tensorflow, onnx = report["in_process"]["tensorflow (oneDNN on)"], report["in_process"]["onnxruntime"]
    batch_speed_up = onnx["inference_only_images_per_second"] / tensorflow["inference_only_images_per_second"]
    single_speed_up = tensorflow["inference_only_single_ms"] / onnx["inference_only_single_ms"]
    service = report["service"]
    lines = _format(rows)
    lines.append("")
    lines += _format([
        ("onnxruntime / tensorflow, inference only", "value"),
        ("batch 16", f"{batch_speed_up:.2f}x"),
        ("batch 1", f"{single_speed_up:.2f}x"),
        ("model multiply-accumulates per image", f"{compute['multiply_accumulates_per_image'] / 1e9:.2f} G"),
        ("CPU peak, all cores", f"{peak / 1e9:.0f} G multiply-accumulates/s" if peak else "not measured (no gcc)"),
        ("CPU peak measured with", f"{compute['cpu_peak_instruction_set'] or '-'} on {compute['cpu_model']}"),
    ])
    lines.append("")
    lines += _format([
        (f"service ({report['serving_runtime']})", "value"),
        (f"bulk, {report['images']} images in one request", f"{service['bulk_images_per_second']:.1f} images/s"),
        ("in-process limit, measured alongside", f"{service['in_process_alongside_images_per_second']:.1f} images/s"),
        ("bulk / in-process limit (median of paired runs)", f"{service['bulk_ratio_to_in_process']:.2f}x"),
        ("original path: one POST /predict/ at a time", f"{service['sync_predict_images_per_second']:.1f} images/s"),
        ("single image, submit to result: p50", f"{service['single_latency_p50_ms']:.0f} ms"),
        ("single image, submit to result: p95", f"{service['single_latency_p95_ms']:.0f} ms"),
        ("p50 minus in-process single image", f"{service['single_p50_minus_in_process_ms']:.0f} ms"),
        ("API peak RSS", f"{service['api_peak_rss_mb']:.0f} MB"),
        ("worker model process peak RSS", f"{service['worker_model_process_peak_rss_mb']:.0f} MB"),
        ("worker parent process peak RSS", f"{service['worker_parent_peak_rss_mb']:.0f} MB"),
        ("worker cold start (process start to ready)", f"{service['worker_cold_start_seconds']:.1f} s"),
        *([("explained single image: extra time (mean)", f"{service['explain_extra_ms_per_image']:.0f} ms"),
           ("first explained job (loads TensorFlow + model)", f"{service['explain_first_job_ms']:.0f} ms"),
           ("worker model process peak RSS with explainer",
            f"{service['worker_model_process_peak_rss_with_explainer_mb']:.0f} MB")]
          if "explain_extra_ms_per_image" in service else []),
    ])
    return "\n".join(lines)


def _format(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]


if __name__ == "__main__":
    main()
