"""The in-process limit: decode + preprocess + batched inference of the same images in one process.

Run by bench/run.py in a fresh process per configuration (TF reads TF_ENABLE_ONEDNN_OPTS at import);
prints one JSON object.
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pneuradnet.classifier import Classifier


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
