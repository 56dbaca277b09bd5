"""The in-process limit: decode + preprocess + batched inference of the same images in one process.

Run by bench/run.py in a fresh process per configuration (TF reads TF_ENABLE_ONEDNN_OPTS at import);
prints one JSON object.
"""

import argparse
import json
import multiprocessing
import statistics
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np

from pneuradnet.classifier import Classifier
from pneuradnet.manifest import MODEL_CACHE_DIR


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--runtime", default="tensorflow")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--singles", type=int, default=20)
    args = parser.parse_args()

    started = time.perf_counter()
    classifier = Classifier.load("default", runtime=args.runtime, max_batch=args.batch, cache_dir=args.cache_dir)
    classifier.warm_up()
    load_seconds = time.perf_counter() - started
    items = [(path.name, path.read_bytes()) for path in args.images]

    bulk = [bulk_images_per_second(classifier, items) for _ in range(args.repeats)]

    # The runtime alone, on identical preprocessed arrays: how the runtimes compare without decoding.
    arrays = np.stack([classifier.prepare(name, data).pixels for name, data in items[:args.batch]])
    inference_batch = statistics.median(_seconds(classifier.runtime.run, arrays) for _ in range(args.singles // 2))
    inference_single = statistics.median(_seconds(classifier.runtime.run, arrays[:1]) for _ in range(args.singles))

    singles = []
    for index in range(args.singles):
        started = time.perf_counter()
        classifier.classify([items[index % len(items)]])
        singles.append((time.perf_counter() - started) * 1000)

    print(json.dumps({
        "runtime": args.runtime,
        "batch": args.batch,
        "images_per_second": statistics.median(bulk),
        "single_image_ms": statistics.median(singles),
        "inference_only_images_per_second": args.batch / inference_batch,
        "inference_only_single_ms": inference_single * 1000,
        "load_and_warm_up_seconds": load_seconds,
        "peak_rss_mb": _peak_rss_mb(),
    }))


def bulk_images_per_second(classifier: Classifier, items: list[tuple[str, bytes]]) -> float:
    """Images/s classifying the (name, bytes) items as a worker does: decoded, then max_batch at a time."""
    started = time.perf_counter()
    for start in range(0, len(items), classifier.max_batch):
        classifier.classify(items[start:start + classifier.max_batch])
    return len(items) / (time.perf_counter() - started)


def parallel_images_per_second(radiographs: list[Path], count: int, *, processes: int, threads: int) -> float:
    """Images/s of `processes` processes at once, each loading the default model (ONNX Runtime, `threads` inference
    threads) and classifying `count` images cycled from `radiographs` as bulk_images_per_second does: the
    in-process limit laid out as a worker with WORKER_CONCURRENCY processes of WORKER_THREADS is."""
    context = multiprocessing.get_context("spawn")
    start_together = context.Barrier(processes)
    spans = context.Queue()
    loops = [context.Process(target=_timed_loop, args=(radiographs, count, threads, start_together, spans))
             for _ in range(processes)]
    for loop in loops:
        loop.start()
    # A loop that dies puts nothing: give up after an hour rather than wait for ever.
    started, finished = zip(*(spans.get(timeout=3600) for _ in loops), strict=True)
    for loop in loops:
        loop.join()
    return processes * count / (max(finished) - min(started))  # perf_counter is one clock for the whole machine


def _timed_loop(radiographs: list[Path], count: int, threads: int, start_together: Barrier,
                spans: "multiprocessing.Queue[tuple[float, float]]") -> None:
    classifier = Classifier.load("default", runtime="onnxruntime", threads=threads, cache_dir=MODEL_CACHE_DIR)
    classifier.warm_up()
    items = [(path.name, path.read_bytes()) for path in radiographs]
    items = [items[n % len(items)] for n in range(count)]
    start_together.wait()
    started = time.perf_counter()
    bulk_images_per_second(classifier, items)
    spans.put((started, time.perf_counter()))


def _seconds(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> float:
    started = time.perf_counter()
    run(batch)
    return time.perf_counter() - started


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
