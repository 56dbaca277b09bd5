"""The DICOM node end to end: `.venv/bin/python -m bench.dicom` makes full-size DX instances (2,500 x 3,000,
16 bits allocated, 12 stored, a VOI window), sends them with dcmtk's storescu over several associations at once to a
node and a worker it starts (on a Redis database of its own, REDIS_URL's host, database 6), and reports:
- instances/s and MB/s through the SCP (first association opened to last instance acknowledged);
- the node's peak RSS;
- end-to-end classification speed (first instance sent to last job finished) as a ratio to the in-process limit
  on the same files (measured first, in this process, before the worker starts: one model on the cores at a time).
Prints a table and writes it as JSON (bench/results/dicom.json). `--distinct` instances are made (each about
15 MB on disk, each of a study of its own) and sent in turn, over and over: a resent instance is one more job of its
study's batch. Run it on a quiet machine.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom.uid import generate_uid
from redis import Redis

from bench.compute import cpu_model
from bench.drills import _instruction_set
from bench.inprocess import bulk_images_per_second
from bench.run import _format, _peak_rss_mb
from pneuradnet.classifier import Classifier
from service.jobstore import JobStore
from service.settings import Settings
from tests.dicomnode.instances import full_size_dx, write
from tests.processes import ROOT, free_port, start_worker, stop, wait_until

DICOM_BENCH_DB = 6
STORESCU = "/usr/bin/storescu"
"""Debian's dcmtk (pynetdicom installs a Python tool of the same name into the venv)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--associations", type=int, default=4, help="storescu processes sending at once")
    parser.add_argument("--distinct", type=int, default=16, help="instances made, sent in turn")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--columns", type=int, default=2500)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dicom.json")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="pneuradnet-bench-dicom-"))
    made = [write(full_size_dx(study_uid=generate_uid(), rows=args.rows, columns=args.columns, seed=n),
                  folder / f"{n}.dcm") for n in range(args.distinct)]
    files = [made[n % len(made)] for n in range(args.instances)]
    megabytes = sum(path.stat().st_size for path in files) / 1e6
    limit = _in_process(made)

    redis_url = f"redis://127.0.0.1:6379/{DICOM_BENCH_DB}"
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    env = {**os.environ, "REDIS_URL": redis_url, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
           "DICOM_STUDY_TIMEOUT": "2", "PYTHONPATH": "."}
    worker = start_worker(folder / "worker.log", env)
    node, port = _start_node(folder / "node.log", env)
    store = JobStore(redis_url, ttl=3600)
    try:
        started = time.perf_counter()
        senders = [_send(files[n::args.associations], port, calling=f"MODALITY{n}")
                   for n in range(args.associations)]
        failures = [sender for sender in senders if sender.wait() != 0]
        sent_in = time.perf_counter() - started
        wait_until(lambda: _finished(store) >= args.instances, timeout=3600, what="every job to finish",
                   interval=0.2)
        classified_in = time.perf_counter() - started
        report = {
            "machine": {"cpu": cpu_model(), "instruction_set": _instruction_set(), "cores": os.cpu_count()},
            "instances": args.instances, "associations": args.associations,
            "instance_mb": round(megabytes / args.instances, 1), "senders_failed": len(failures),
            "scp_instances_per_second": args.instances / sent_in, "scp_mb_per_second": megabytes / sent_in,
            "node_peak_rss_mb": _peak_rss_mb(node.pid),
            "end_to_end_images_per_second": args.instances / classified_in,
            "in_process_images_per_second": limit,
            "ratio_to_in_process": args.instances / classified_in / limit,
        }
    finally:
        store.close()
        stop(node)
        stop(worker)
        redis.flushdb()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    rows = [("instances/s through the SCP", "MB/s", "node peak RSS MB", "end to end images/s",
             "in-process images/s", "ratio")]
    rows.append((f"{report['scp_instances_per_second']:.1f}", f"{report['scp_mb_per_second']:.0f}",
                 f"{report['node_peak_rss_mb']:.0f}", f"{report['end_to_end_images_per_second']:.1f}",
                 f"{limit:.1f}", f"{report['ratio_to_in_process']:.2f}"))
    print("\n".join(_format(rows)))
    print(f"\n{args.instances} instances of {report['instance_mb']} MB over {args.associations} associations; "
          f"written to {args.out}")


def _in_process(files: list[Path]) -> float:
    """Images/s of the serving runtime classifying these files in this process, as a worker does (median of 3)."""
    settings = Settings()
    classifier = Classifier.load("default", runtime=settings.inference_runtime, cache_dir=settings.model_cache_dir)
    classifier.warm_up()
    items = [(path.name, path.read_bytes()) for path in files]
    return statistics.median(bulk_images_per_second(classifier, items) for _ in range(3))


def _start_node(log_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "dicomnode"], cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, env={**env, "DICOM_PORT": str(port)})
    wait_until(lambda: "listening on port" in log_path.read_text() or process.poll() is not None, timeout=60,
               what="the node to listen")
    return process, port


def _send(files: list[Path], port: int, *, calling: str) -> subprocess.Popen:
    return subprocess.Popen([STORESCU, "-aet", calling, "-aec", "PNEURADNET", "127.0.0.1", str(port),
                             *map(str, files)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _finished(store: JobStore) -> int:
    """Jobs finished so far (the transition script counts them in the metrics hash)."""
    counts = store.metrics()
    return int(counts.get("jobs_succeeded", 0) + counts.get("jobs_failed", 0))


if __name__ == "__main__":
    main()
