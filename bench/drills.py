"""Issue 16's drill, a worker SIGKILLed mid-bulk again and again: `.venv/bin/python -m bench.drills --drills 20`
starts an API and a worker, runs the drills one after the other, prints a table and writes it as JSON
(bench/results/drills.json).

Each drill, on a Redis database of its own (DRILLS_DB):
1. listens to every job's events channel (a psubscribe made before anything is submitted), then submits a bulk of
   32 real radiographs (the model package's 16, each twice under different names) in one POST /jobs: the real
   admission, lane choice and fair share;
2. waits for its moment (MOMENTS, in turn: right after the first job starts, in the middle of the first chunk, ...)
   and SIGKILLs the worker's whole process group, as tests/worker/test_faults.py does: parent and model process die
   at once, nothing is acknowledged, nobody retires from the worker registry;
3. starts a new worker and waits until every job has finished (at most FINISH_TIMEOUT after the kill), then until
   no task on the broker names a job of the drill and no chunk holds a place in fair share: the killed worker's
   unacknowledged task comes back after the broker's visibility timeout and runs again, and a duplicate would
   show then;
4. counts jobs lost (not finished, or failed as `worker-lost`), jobs duplicated (more than one `succeeded` on their
   channel; the store's `jobs_succeeded` counter is compared with the jobs that succeeded too), the images the
   model ran (the workers' `forward pass` lines: the work done, which the state machine cannot hide; at most the
   jobs plus the killed process's chunk) and the time from the kill to the last job finished.

The settings are short so that a drill takes seconds, not minutes: JOB_TIMEOUT=5, so the jobs the killed worker
held are leased for 5 + 15 s from their claim, and the broker hands its taken and never acknowledged task out again
5 + 30 s after it was taken. That is the one way back: the reconciler (SWEEP_INTERVAL=2) requeues a job whose
lease is over only when no message on the broker names it, and the killed task's message is still there.
"""

import argparse
import contextlib
import importlib.metadata
import json
import os
import re
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import httpx
from redis import Redis
from redis.client import PubSub

from bench.compute import INSTRUCTION_SETS, cpu_model
from bench.run import RADIOGRAPHS, _format, _machine
from service.broker import messages_in_broker
from service.fairshare import FairShare
from service.jobstore import Job, JobStatus, JobStore
from service.keys import RUNNING_REGISTRY, job_channel
from service.queue import visibility_timeout
from service.settings import Settings
from tests.processes import ROOT, images_passed, start_api, start_worker, stop, wait_until

DRILLS_DB = 9
"""The drills' Redis database (REDIS_URL's host): flushed before and after, so no other data may live there."""

JOB_TIMEOUT = 5
SWEEP_INTERVAL = 2

COPIES = ("a", "b")
"""Each of the package's 16 radiographs is submitted once per copy, named `{copy}-{file name}`: 32 jobs."""

FINISH_TIMEOUT = 180.0
"""Seconds after the kill within which every job must finish, or it counts as lost: far beyond the slowest path
back (the broker's redelivery, JOB_TIMEOUT + 30 s after the task was taken) plus a new worker's start."""

SETTLE_TIMEOUT = visibility_timeout(Settings(job_timeout=JOB_TIMEOUT)) + 30.0
"""Seconds after the last job finished within which the broker and fair share must hold nothing of the drill:
the killed worker's task comes back within the visibility timeout (plus the 5 s restore interval) and runs."""

QUIET_SECONDS = 1.0
"""The events channel is read until it has been silent this long (the last messages may still be on their way)."""

MISS_ATTEMPTS = 3
"""Bulks a drill submits at most: a chunk of 16 takes 0.3 to 1.2 s here, so the one to be killed may finish during
the delay; the drill then lets the bulk finish and submits it again, waiting half as long (a drill whose last
attempt missed too kills anyway, and its row shows nothing running at the kill)."""

POLL_INTERVAL = 0.01
"""Seconds between looks at the jobs while waiting for the moment of the kill (a 16-image chunk takes seconds)."""

REQUEUED_LOG = re.compile(r"reconciled the queue: \d+ expired ids forgotten, \d+ lost chunks put back, (\d+) jobs of "
                          r"vanished workers requeued, (\d+) jobs without a task dispatched again")
"""The reconciler's warning after a sweep that did something (service/reconciler.py)."""


@dataclass(frozen=True)
class Moment:
    """When a drill kills the worker: once `finished` jobs have succeeded and some are running, `into_chunk` of a
    chunk's time later (a chunk is MAX_BATCH images, 16: the bulk is two chunks, run one after the other)."""

    name: str
    finished: int
    into_chunk: float


MOMENTS = (
    Moment("first job started", finished=0, into_chunk=0.0),
    Moment("mid first chunk", finished=0, into_chunk=0.5),
    Moment("second chunk started", finished=16, into_chunk=0.0),
    Moment("mid second chunk", finished=16, into_chunk=0.5),
    Moment("near the end", finished=16, into_chunk=0.75),
)
"""The drills take these in turn, so that the kill falls at different points of the bulk."""


@dataclass
class DrillResult:
    drill: int
    moment: str
    attempts: int
    """Bulks submitted for this drill: one more each time the chunk to be killed finished during the delay."""
    share_of_chunk: float
    """The share of a chunk's time waited before the kill: the moment's, halved at each attempt missed."""
    chunk_estimate_seconds: float
    """The running chunk's time as guessed: the bulk's own first chunk's, else the previous drill's chunks'."""
    kill_delay_seconds: float
    """How long after the moment's condition held the worker was killed."""
    succeeded_before_kill: int
    running_at_kill: int
    """Jobs the killed worker held: read right after the kill, when nothing can move them for seconds."""
    lost: int
    duplicated: int
    succeeded: int
    failed_other: dict[str, int]
    """Failed jobs by problem type, worker-lost (counted as lost) apart: e.g. job-timeout on a slow machine."""
    succeeded_events: int
    jobs_succeeded_metric: float
    """The store's jobs_succeeded counter, its increase during the drill."""
    redelivered: int
    """Jobs handed to a worker more than once."""
    requeued_by_reconciler: int
    """Running jobs the reconciler took back from the killed worker (read from the processes' logs)."""
    redispatched_by_reconciler: int
    forward_passed: int
    """Images the model ran during the drill, the killed process's included."""
    worker_start_seconds: float
    lease_over_seconds: float | None
    """From the kill to the end of the lease of the jobs the killed worker held (on Redis' clock): from then on
    another claim may take them."""
    recovery_seconds: float | None
    """From the kill to the last job finished; None if some never finished."""
    settled: bool
    """The broker and fair share held nothing of the drill any more within SETTLE_TIMEOUT."""
    quiet_seconds: float
    """From the kill to the moment the drill was settled (or gave up): the killed task's redelivery included."""
    evidence: list[dict]
    """The records of every lost or duplicated job, for the report."""


@dataclass
class Rig:
    """What every drill uses: the API, the current worker, the store, the logs."""

    url: str
    client: httpx.Client
    redis: Redis
    store: JobStore
    fair_share: FairShare
    env: dict[str, str]
    logs: Path
    worker: subprocess.Popen
    worker_log: Path
    uploads: list[tuple[str, bytes]]
    chunk_seconds: float = 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drills", type=int, default=len(MOMENTS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "drills.json")
    args = parser.parse_args()
    # `kill PID` stops the drills as Ctrl-C does: through the `finally` below, which stops the processes started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    folder = Path(str(importlib.metadata.distribution("pneumonia-model-package").locate_file(RADIOGRAPHS)))
    radiographs = sorted(folder.glob("*.jpeg"))
    uploads = [(f"{copy}-{path.name}", path.read_bytes()) for copy in COPIES for path in radiographs]
    redis_url = f"redis://127.0.0.1:6379/{DRILLS_DB}"
    redis = Redis.from_url(redis_url, decode_responses=True)
    redis.flushdb()
    env = {**os.environ, "REDIS_URL": redis_url, "JOB_TIMEOUT": str(JOB_TIMEOUT),
           "SWEEP_INTERVAL": str(SWEEP_INTERVAL), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    env.pop("API_KEYS", None)  # one owner: the drills measure recovery, not fair share between keys
    logs = Path(tempfile.mkdtemp(prefix="pneuradnet-drills-"))
    api, url = start_api(logs / "api.log", env)
    worker_log = logs / "worker-00.log"
    rig = Rig(url=url, client=httpx.Client(base_url=url, timeout=120), redis=redis,
              store=JobStore(redis_url, ttl=3600), fair_share=FairShare(redis_url, ttl=3600), env=env, logs=logs,
              worker=start_worker(worker_log, env), worker_log=worker_log, uploads=uploads)
    results: list[DrillResult] = []
    calibrated = 0.0
    try:
        calibrated = rig.chunk_seconds = _calibrate(rig)
        for number in range(1, args.drills + 1):
            result = _drill(rig, number, MOMENTS[(number - 1) % len(MOMENTS)])
            results.append(result)
            print(_row(result), flush=True)
    finally:
        stop(rig.worker)
        stop(api)
        rig.client.close()
        rig.store.close()
        rig.fair_share.close()
        redis.flushdb()

    report = {"machine": {**_machine(), "cpu_model": cpu_model(), "instruction_set": _instruction_set()},
              "settings": {"JOB_TIMEOUT": JOB_TIMEOUT, "SWEEP_INTERVAL": SWEEP_INTERVAL, "jobs_per_drill": len(uploads),
                           "chunk_seconds_calibrated": calibrated},
              "totals": _totals(results), "drills": [asdict(result) for result in results], "logs": str(logs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print()
    print(_table(report))
    print(f"\nwritten to {args.out}; the processes' logs are in {logs}")


def _calibrate(rig: Rig) -> float:
    """A chunk's time on this machine, from one bulk run without a kill (which also warms the worker up)."""
    job_ids = _submit(rig)
    _wait_finished(rig, job_ids, timeout=120)
    jobs = rig.store.get_jobs(job_ids)
    assert all(job.status is JobStatus.SUCCEEDED for job in jobs), [job.error for job in jobs]
    return _chunk_seconds(jobs) or 0.0


def _drill(rig: Rig, number: int, moment: Moment) -> DrillResult:
    share = moment.into_chunk
    for attempt in range(1, MISS_ATTEMPTS + 1):
        log_offsets = {path: path.stat().st_size for path in (rig.logs / "api.log", rig.worker_log)}
        events = rig.redis.pubsub(ignore_subscribe_messages=True)
        events.psubscribe(job_channel("*"))
        metric_before = rig.store.metrics().get("jobs_succeeded", 0.0)
        job_ids = _submit(rig)
        wait_until(partial(_reached, rig.store, job_ids, moment), timeout=120, interval=POLL_INTERVAL,
                   what=f"the moment '{moment.name}'")
        # The chunk that just finished in this bulk, if one has, is the best guess of the running one's time.
        chunk_estimate = _chunk_seconds(rig.store.get_jobs(job_ids)) or rig.chunk_seconds
        delay = share * chunk_estimate
        time.sleep(delay)
        if attempt == MISS_ATTEMPTS or _running(rig.store, job_ids):
            break
        # Missed: the chunk finished during the delay. Let the bulk finish, then submit it again, sooner.
        events.close()
        _wait_finished(rig, job_ids, timeout=120)
        wait_until(partial(_settled, rig, job_ids), timeout=SETTLE_TIMEOUT, what="the missed bulk to settle")
        share /= 2
    killed_at = time.time()
    os.killpg(rig.worker.pid, signal.SIGKILL)  # the worker runs in a session of its own (tests/processes.py)
    rig.worker.wait()
    at_kill = Counter(job.status for job in rig.store.get_jobs(job_ids))
    lease_over = _lease_over(rig, job_ids)

    started = time.monotonic()
    rig.worker_log = rig.logs / f"worker-{number:02d}.log"
    rig.worker = start_worker(rig.worker_log, rig.env)
    worker_start = time.monotonic() - started
    log_offsets[rig.worker_log] = 0
    with contextlib.suppress(TimeoutError):  # the jobs still unfinished then are lost: counted below
        _wait_finished(rig, job_ids, timeout=max(0.0, killed_at + FINISH_TIMEOUT - time.time()))
    try:
        wait_until(lambda: _settled(rig, job_ids), timeout=SETTLE_TIMEOUT, what="the broker to hold nothing more")
        settled = True
    except TimeoutError:
        settled = False
    quiet = time.time() - killed_at

    succeeded_events = _succeeded_events(events, job_ids)
    events.close()
    jobs = rig.store.get_jobs(job_ids)
    lost = [job for job in jobs if not job.status.finished or _problem(job) == "worker-lost"]
    duplicated = [job for job in jobs if succeeded_events[job.id] > 1]
    finished_at = [_at(job.finished_at) for job in jobs if job.status.finished]
    requeued, redispatched = _reconciled(log_offsets)
    passed = _forward_passed(log_offsets)
    rig.chunk_seconds = _chunk_seconds(jobs) or rig.chunk_seconds  # the next drill's guess: this one's chunks
    return DrillResult(
        drill=number, moment=moment.name, attempts=attempt, share_of_chunk=share,
        chunk_estimate_seconds=round(chunk_estimate, 3), kill_delay_seconds=round(delay, 3),
        succeeded_before_kill=at_kill[JobStatus.SUCCEEDED], running_at_kill=at_kill[JobStatus.RUNNING],
        lost=len(lost), duplicated=len(duplicated), succeeded=sum(job.status is JobStatus.SUCCEEDED for job in jobs),
        failed_other=dict(Counter(_problem(job) or "?" for job in jobs
                                  if job.status is JobStatus.FAILED and _problem(job) != "worker-lost")),
        succeeded_events=sum(succeeded_events.values()),
        jobs_succeeded_metric=rig.store.metrics().get("jobs_succeeded", 0.0) - metric_before,
        redelivered=sum(job.deliveries > 1 for job in jobs), requeued_by_reconciler=requeued,
        redispatched_by_reconciler=redispatched, forward_passed=passed, worker_start_seconds=round(worker_start, 2),
        lease_over_seconds=None if lease_over is None else round(lease_over, 2),
        recovery_seconds=round(max(finished_at) - killed_at, 2) if len(finished_at) == len(jobs) else None,
        settled=settled, quiet_seconds=round(quiet, 2),
        evidence=[{**_record(job), "succeeded_events": succeeded_events[job.id]} for job in [*lost, *duplicated]],
    )


def _submit(rig: Rig) -> list[str]:
    answer = rig.client.post("/jobs", files=[("files", upload) for upload in rig.uploads])
    answer.raise_for_status()
    assert answer.json()["lane"] == "bulk", answer.json()["lane"]
    return [job["id"] for job in answer.json()["jobs"]]


def _wait_finished(rig: Rig, job_ids: list[str], *, timeout: float) -> None:
    wait_until(lambda: all(job.status.finished for job in rig.store.get_jobs(job_ids)), timeout=timeout,
               what="every job to finish")


def _chunk_seconds(jobs: list[Job]) -> float | None:
    """The median time of the tasks that ran these jobs (a job's start is when its task claimed it); None if none
    has succeeded yet."""
    times = [_at(job.finished_at) - _at(job.started_at) for job in jobs if job.status is JobStatus.SUCCEEDED]
    return statistics.median(times) if times else None


def _running(store: JobStore, job_ids: list[str]) -> bool:
    return any(job.status is JobStatus.RUNNING for job in store.get_jobs(job_ids))


def _reached(store: JobStore, job_ids: list[str], moment: Moment) -> bool:
    statuses = Counter(job.status for job in store.get_jobs(job_ids))
    return statuses[JobStatus.SUCCEEDED] >= moment.finished and statuses[JobStatus.RUNNING] > 0


def _lease_over(rig: Rig, job_ids: list[str]) -> float | None:
    """Seconds from now (the kill) until the lease of the jobs the killed worker held is over, on Redis' clock
    (None: it held none)."""
    held = [job for job in rig.store.get_jobs(job_ids) if job.status is JobStatus.RUNNING]
    if not held:
        return None
    return max(rig.redis.zscore(RUNNING_REGISTRY, job.id) or 0.0 for job in held) - rig.store.redis_now()


def _settled(rig: Rig, job_ids: list[str]) -> bool:
    """Nothing of the drill left to run: no task on the broker naming its jobs (waiting, or taken and never
    acknowledged), no chunk pending or in flight in fair share, no job running."""
    named = {job_id for message in messages_in_broker(rig.redis) for job_id in message.job_ids}
    return not named & set(job_ids) and rig.fair_share.keys_waiting() == 0 and rig.store.running_count() == 0


def _succeeded_events(events: PubSub, job_ids: list[str]) -> Counter[str]:
    """`succeeded` messages per job of the drill on the channels psubscribed to."""
    channels = {job_channel(job_id): job_id for job_id in job_ids}
    counted: Counter[str] = Counter({job_id: 0 for job_id in job_ids})
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < QUIET_SECONDS:  # get_message answers None for confirmations too
        if message := events.get_message(timeout=0.1):
            quiet_since = time.monotonic()
            if message["channel"] in channels and message["data"] == JobStatus.SUCCEEDED.value:
                counted[channels[message["channel"]]] += 1
    return counted


def _reconciled(log_offsets: dict[Path, int]) -> tuple[int, int]:
    """Jobs the reconciler requeued and dispatched again during the drill, from the warnings in every log."""
    requeued = redispatched = 0
    for path, offset in log_offsets.items():
        with path.open("rb") as log:
            log.seek(offset)
            for match in REQUEUED_LOG.finditer(log.read().decode(errors="replace")):
                requeued += int(match[1])
                redispatched += int(match[2])
    return requeued, redispatched


def _forward_passed(log_offsets: dict[Path, int]) -> int:
    """Images the workers ran through the model during the drill, from their logs."""
    passed = 0
    for path, offset in log_offsets.items():
        with path.open("rb") as log:
            log.seek(offset)
            passed += images_passed(log.read().decode(errors="replace"))
    return passed


def _problem(job: Job) -> str | None:
    return job.error["type"].rsplit(":", 1)[-1] if job.error else None


def _record(job: Job) -> dict:
    return {"id": job.id, "filename": job.filename, "status": job.status.value, "deliveries": job.deliveries,
            "worker": job.worker, "created_at": job.created_at, "started_at": job.started_at,
            "finished_at": job.finished_at, "error": job.error}


def _at(timestamp: str | None) -> float:
    return datetime.fromisoformat(timestamp).timestamp() if timestamp else float("nan")


def _instruction_set() -> str:
    """The widest of bench/compute.py's instruction sets this CPU has (its flags in /proc/cpuinfo)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set()
    if cpuinfo.exists():
        flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo.read_text().splitlines()
                      if line.startswith("flags")), set())
    if "avx512f" in flags:
        return "avx512f"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return INSTRUCTION_SETS[-1]


def _totals(results: list[DrillResult]) -> dict:
    recoveries = [result.recovery_seconds for result in results if result.recovery_seconds is not None]
    beyond = [result.recovery_seconds - result.lease_over_seconds for result in results
              if result.recovery_seconds is not None and result.lease_over_seconds is not None]
    return {
        "drills": len(results),
        "jobs": sum(result.succeeded + result.lost + sum(result.failed_other.values()) for result in results),
        "lost": sum(result.lost for result in results),
        "duplicated": sum(result.duplicated for result in results),
        "forward_passed_beyond_jobs": sum(result.forward_passed - result.succeeded for result in results),
        "forward_passed_beyond_jobs_max": max((result.forward_passed - result.succeeded for result in results),
                                              default=None),
        "failed_other": sum(sum(result.failed_other.values()) for result in results),
        "metric_mismatches": sum(result.jobs_succeeded_metric != result.succeeded for result in results),
        "unsettled": sum(not result.settled for result in results),
        "kills_with_nothing_running": sum(result.running_at_kill == 0 for result in results),
        "recovery_seconds_min": min(recoveries, default=None),
        "recovery_seconds_median": statistics.median(recoveries) if recoveries else None,
        "recovery_seconds_max": max(recoveries, default=None),
        "recovery_beyond_lease_seconds_median": statistics.median(beyond) if beyond else None,
        "quiet_seconds_max": max((result.quiet_seconds for result in results), default=None),
    }


HEADER = ("drill", "moment", "attempts", "kill: share of chunk", "running at kill", "lost", "duplicated",
          "succeeded events", "jobs_succeeded +", "forward passed", "requeued by reconciler", "worker start s",
          "lease over s", "recovery s", "quiet s")


def _row(result: DrillResult) -> str:
    recovery = "never" if result.recovery_seconds is None else f"{result.recovery_seconds:.1f}"
    other = f" (+{sum(result.failed_other.values())} failed: {result.failed_other})" if result.failed_other else ""
    return (f"drill {result.drill:2d}  {result.moment:<22}  attempts {result.attempts}  "
            f"kill at {result.share_of_chunk:.2f} of a chunk  running at kill {result.running_at_kill:2d}  "
            f"lost {result.lost}  duplicated {result.duplicated}  recovery {recovery} s{other}")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _table(report: dict) -> str:
    rows: list[tuple[str, ...]] = [HEADER]
    for drill in report["drills"]:
        recovery = "never" if drill["recovery_seconds"] is None else f"{drill['recovery_seconds']:.1f}"
        rows.append((str(drill["drill"]), drill["moment"], str(drill["attempts"]),
                     f"{drill['share_of_chunk']:.2f} ({drill['kill_delay_seconds']:.2f} s)",
                     str(drill["running_at_kill"]), str(drill["lost"]),
                     str(drill["duplicated"]), str(drill["succeeded_events"]), f"{drill['jobs_succeeded_metric']:g}",
                     str(drill["forward_passed"]), str(drill["requeued_by_reconciler"]),
                     f"{drill['worker_start_seconds']:.1f}", _seconds(drill["lease_over_seconds"]), recovery,
                     _seconds(drill["quiet_seconds"])))
    totals, machine = report["totals"], report["machine"]
    lines = _format(rows)
    lines.append("")
    lines += _format([
        ("totals", "value"),
        ("drills", str(totals["drills"])),
        ("jobs", str(totals["jobs"])),
        ("lost", str(totals["lost"])),
        ("duplicated", str(totals["duplicated"])),
        ("images forward-passed beyond the jobs: in all / the most in a drill (at most 16: the killed chunk)",
         f"{totals['forward_passed_beyond_jobs']} / {totals['forward_passed_beyond_jobs_max']}"),
        ("failed for another reason", str(totals["failed_other"])),
        ("drills whose jobs_succeeded increase differs from jobs succeeded", str(totals["metric_mismatches"])),
        ("drills not settled (broker or fair share still busy)", str(totals["unsettled"])),
        ("kills with nothing running", str(totals["kills_with_nothing_running"])),
        ("recovery, kill to last job finished: min / median / max",
         " / ".join("-" if totals[f"recovery_seconds_{k}"] is None else f"{totals[f'recovery_seconds_{k}']:.1f} s"
                    for k in ("min", "median", "max"))),
        ("recovery beyond the end of the lease (median): the broker's redelivery + a chunk's time",
         _seconds(totals["recovery_beyond_lease_seconds_median"]) + " s"),
        ("kill to quiet (broker and fair share empty), max", _seconds(totals["quiet_seconds_max"]) + " s"),
        ("calibrated chunk time (16 images)", f"{report['settings']['chunk_seconds_calibrated']:.2f} s"),
        ("CPU", f"{machine['cpu_model']}, {machine['cores']} cores, {machine['instruction_set']}"),
    ])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
