"""The DICOM node end to end: `.venv/bin/python -m bench.dicom` makes full-size DX instances (2,500 x 3,000,
16 bits allocated, 12 stored, a VOI window), sends them with dcmtk's storescu over several associations at once to a
node and a worker it starts (on a Redis database of its own, REDIS_URL's host, database 6), and reports:
- instances/s and MB/s through the SCP (first association opened to last instance acknowledged);
- the node's peak RSS;
- CPU time per instance: the node's, the senders', the worker's (all its processes) and Redis' (the whole
  server's), from the first instance sent to the last job finished, and the model's per image in process;
- end-to-end classification speed (first instance sent to last job finished) as a ratio to the in-process limit
  on the same files (measured first, in this process, before the worker starts: one model on the cores at a time).
`--receiver dcmtk` sends the same instances to dcmtk's own storescp, which receives and discards them (`--ignore`),
instead of the node: the floor no Python SCP goes under on this machine (instances/s, and CPU per instance of
receiver and senders).
Prints a table and writes it as JSON (bench/results/dicom.json, or dicom-dcmtk.json). `--distinct` instances are
made (each about 15 MB on disk, each of a study of its own) and sent in turn, over and over: a resent instance is one
more job of its study's batch. Run it on a quiet machine.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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
STORESCP = "/usr/bin/storescp"
DCMTK_MAX_PDU = 131072
"""The largest PDU storescp takes (its -pdu option's upper bound); the node takes 1 MiB (dicomnode/scp.py)."""


@dataclass(frozen=True)
class Sending:
    seconds: float
    failed: int
    senders_cpu: float
    """CPU seconds of the storescu processes, together."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--associations", type=int, default=4, help="storescu processes sending at once")
    parser.add_argument("--distinct", type=int, default=16, help="instances made, sent in turn")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--columns", type=int, default=2500)
    parser.add_argument("--receiver", choices=("node", "dcmtk"), default="node",
                        help="dcmtk: storescp --ignore instead of the node and a worker (the floor)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="pneuradnet-bench-dicom-"))
    made = [write(full_size_dx(study_uid=generate_uid(), rows=args.rows, columns=args.columns, seed=n),
                  folder / f"{n}.dcm") for n in range(args.distinct)]
    files = [made[n % len(made)] for n in range(args.instances)]
    megabytes = sum(path.stat().st_size for path in files) / 1e6
    report = {"machine": {"cpu": cpu_model(), "instruction_set": _instruction_set(), "cores": os.cpu_count()},
              "receiver": args.receiver, "instances": args.instances, "associations": args.associations,
              "instance_mb": round(megabytes / args.instances, 1)}
    if args.receiver == "dcmtk":
        report |= _through_dcmtk(files, folder, associations=args.associations, megabytes=megabytes)
    else:
        report |= _through_node(files, made, folder, associations=args.associations, megabytes=megabytes)
    out = args.out or ROOT / "bench" / "results" / ("dicom.json" if args.receiver == "node" else "dicom-dcmtk.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("\n".join(_format(_table(report))))
    print(f"\n{args.instances} instances of {report['instance_mb']} MB over {args.associations} associations to "
          f"{args.receiver}; written to {out}")


def _through_node(files: list[Path], made: list[Path], folder: Path, *, associations: int,
                  megabytes: float) -> dict:
    limit, model_cpu = _in_process(made)
    redis_url = f"redis://127.0.0.1:6379/{DICOM_BENCH_DB}"
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    env = {**os.environ, "REDIS_URL": redis_url, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
           "DICOM_STUDY_TIMEOUT": "2", "PYTHONPATH": "."}
    worker = start_worker(folder / "worker.log", env)
    node, port = _start_node(folder / "node.log", env)
    store = JobStore(redis_url, ttl=3600)
    try:
        node_cpu, worker_cpu, redis_cpu = _cpu_seconds(node.pid), _tree_cpu_seconds(worker.pid), \
            _redis_cpu_seconds(redis)
        started = time.perf_counter()
        sending = _send_all(files, port, associations=associations)
        wait_until(lambda: _finished(store) >= len(files), timeout=3600, what="every job to finish", interval=0.2)
        classified_in = time.perf_counter() - started
        node_cpu, worker_cpu, redis_cpu = _cpu_seconds(node.pid) - node_cpu, \
            _tree_cpu_seconds(worker.pid) - worker_cpu, _redis_cpu_seconds(redis) - redis_cpu
        return {
            **_receiving(sending, len(files), megabytes), "node_peak_rss_mb": _peak_rss_mb(node.pid),
            "node_cpu_ms_per_instance": 1000 * node_cpu / len(files),
            "redis_cpu_ms_per_instance": 1000 * redis_cpu / len(files),
            "worker_cpu_ms_per_instance": 1000 * worker_cpu / len(files),
            "in_process_cpu_ms_per_image": 1000 * model_cpu,
            "end_to_end_images_per_second": len(files) / classified_in,
            "in_process_images_per_second": limit,
            "ratio_to_in_process": len(files) / classified_in / limit,
        }
    finally:
        store.close()
        stop(node)
        stop(worker)
        redis.flushdb()


def _through_dcmtk(files: list[Path], folder: Path, *, associations: int, megabytes: float) -> dict:
    """storescp, forking a process per association (as the node has a thread per association), discarding what it
    receives: no file written, nothing decoded beyond the DIMSE command."""
    port = free_port()
    with (folder / "storescp.log").open("ab") as log:
        receiver = subprocess.Popen([STORESCP, "--fork", "--ignore", "-aet", "PNEURADNET", "-pdu",
                                     str(DCMTK_MAX_PDU), str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)  # it listens at once; storescu would fail, not wait, if it were not
        receiver_cpu = _cpu_seconds(receiver.pid)
        sending = _send_all(files, port, associations=associations)
        time.sleep(0.5)  # its association processes are reaped, and counted in its children's time
        receiver_cpu = _cpu_seconds(receiver.pid) - receiver_cpu
        return {**_receiving(sending, len(files), megabytes),
                "receiver_cpu_ms_per_instance": 1000 * receiver_cpu / len(files)}
    finally:
        stop(receiver)


def _receiving(sending: Sending, instances: int, megabytes: float) -> dict:
    return {"senders_failed": sending.failed, "scp_instances_per_second": instances / sending.seconds,
            "scp_mb_per_second": megabytes / sending.seconds,
            "senders_cpu_ms_per_instance": 1000 * sending.senders_cpu / instances}


def _table(report: dict) -> list[tuple[str, ...]]:
    head = ("instances/s through the SCP", "MB/s", "CPU ms per instance: receiver", "senders")
    row = (f"{report['scp_instances_per_second']:.1f}", f"{report['scp_mb_per_second']:.0f}",
           f"{report.get('receiver_cpu_ms_per_instance', report.get('node_cpu_ms_per_instance', 0)):.1f}",
           f"{report['senders_cpu_ms_per_instance']:.1f}")
    if report["receiver"] == "dcmtk":
        return [head, row]
    return [(*head, "Redis", "worker", "model in process", "node peak RSS MB", "end to end images/s",
             "in-process images/s", "ratio"),
            (*row, f"{report['redis_cpu_ms_per_instance']:.1f}", f"{report['worker_cpu_ms_per_instance']:.1f}",
             f"{report['in_process_cpu_ms_per_image']:.1f}", f"{report['node_peak_rss_mb']:.0f}",
                   f"{report['end_to_end_images_per_second']:.1f}", f"{report['in_process_images_per_second']:.1f}",
                   f"{report['ratio_to_in_process']:.2f}")]


def _in_process(files: list[Path]) -> tuple[float, float]:
    """Images/s of the serving runtime classifying these files in this process, as a worker does (median of 3), and
    the CPU seconds it uses per image (all its threads)."""
    settings = Settings()
    classifier = Classifier.load("default", runtime=settings.inference_runtime, cache_dir=settings.model_cache_dir)
    classifier.warm_up()
    items = [(path.name, path.read_bytes()) for path in files]
    cpu = time.process_time()
    speed = statistics.median(bulk_images_per_second(classifier, items) for _ in range(3))
    return speed, (time.process_time() - cpu) / (3 * len(items))


def _start_node(log_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "dicomnode"], cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, env={**env, "DICOM_PORT": str(port)})
    wait_until(lambda: "listening on port" in log_path.read_text() or process.poll() is not None, timeout=60,
               what="the node to listen")
    return process, port


def _send_all(files: list[Path], port: int, *, associations: int) -> Sending:
    """Send the files over `associations` storescu processes at once, each its share in turn; returns once all
    have exited (the last instance acknowledged)."""
    before = _children_cpu_seconds()
    started = time.perf_counter()
    senders = [_send(files[n::associations], port, calling=f"MODALITY{n}") for n in range(associations)]
    failed = sum(sender.wait() != 0 for sender in senders)
    # The senders are the only children waited for meanwhile (the node, the worker, storescp run on).
    return Sending(time.perf_counter() - started, failed, _children_cpu_seconds() - before)


def _send(files: list[Path], port: int, *, calling: str) -> subprocess.Popen:
    return subprocess.Popen([STORESCU, "-aet", calling, "-aec", "PNEURADNET", "127.0.0.1", str(port),
                             *map(str, files)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process (all its threads) and of its children it has waited for: utime, stime, cutime and
    cstime in /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(ticks) for ticks in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its live descendants (a worker and its pool), each as _cpu_seconds counts it; a
    child that ends meanwhile is counted in its parent's once reaped."""
    try:
        children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                    for child in (task / "children").read_text().split()]
        return _cpu_seconds(pid) + sum(_tree_cpu_seconds(child) for child in children)
    except FileNotFoundError:
        return 0.0


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _redis_cpu_seconds(redis: Redis) -> float:
    """The Redis server's CPU time, all clients together (its INFO's used_cpu_sys and used_cpu_user)."""
    info = redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _finished(store: JobStore) -> int:
    """Jobs finished so far (the transition script counts them in the metrics hash)."""
    counts = store.metrics()
    return int(counts.get("jobs_succeeded", 0) + counts.get("jobs_failed", 0))


if __name__ == "__main__":
    main()
