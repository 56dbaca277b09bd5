"""The fault campaign (bench/chaos/) in the test command, and its checker on evidence made up to break it.

Two short campaigns, each a process of its own: the fixed seed FIXED_SEED and a random seed (printed, and named in
the failure's message with the command that replays it). Each must end with every invariant holding. A seed that
failed within a short run goes into REGRESSION_SEEDS and runs here for good; one that failed late in a 30-minute
campaign would not reach its moment here, so its race becomes a test of its own that does not depend on timing
(seed 987654321: tests/service/test_jobstore.py, test_a_withdrawn_batch_is_never_a_repeats_answer).

The checker's own tests need no process: a checker that cannot fail proves nothing, so each invariant is shown
to break on evidence that breaks it.
"""

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos.books import BOOKS, FAIR_BOOKS
from bench.chaos.checker import Checker, Evidence, WorkerLog
from bench.chaos.history import Call, Fault, Received
from bench.chaos.settings import time_limit
from tests.processes import ROOT

FIXED_SEED = 20261206

MINUTES = 1.0
"""How long each campaign's clients and nemesis run: with the fleet's start, the heal and the checker, the two
campaigns take about four minutes together."""

REGRESSION_SEEDS: tuple[int, ...] = ()
"""Seeds whose campaign once found a violation, replayed on every run once the service is fixed."""


def run_campaign(seed: int, folder: Path) -> tuple[int, str]:
    """Run bench.chaos as a process; its exit status and output. Past its time limit it is sent SIGTERM, on which
    it stops every process it started."""
    command = [sys.executable, "-m", "bench.chaos", "--minutes", f"{MINUTES:g}", "--seed", str(seed),
               "--report", str(folder / "report.json"), "--workdir", str(folder / "run")]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=time_limit(MINUTES))
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
        return -1, f"the campaign ran past its limit of {time_limit(MINUTES):.0f} s and was stopped\n{output}"
    return process.returncode, output


@pytest.mark.model
@pytest.mark.parametrize("which", ["fixed", "random", *map(str, REGRESSION_SEEDS)])
def test_a_short_fault_campaign_breaks_no_invariant(which: str, tmp_path: Path):
    seed = {"fixed": FIXED_SEED, "random": random.SystemRandom().randrange(1, 10**9)}.get(which) or int(which)
    print(f"fault campaign seed {seed}")
    status, output = run_campaign(seed, tmp_path)
    print(output)
    assert status == 0, (f"seed {seed}: the fault campaign found a violation (replay: .venv/bin/python -m bench.chaos "
                         f"--minutes {MINUTES:g} --seed {seed}; report and logs in {tmp_path}):\n{output[-8000:]}")


# --- the checker, on made-up evidence ------------------------------------------------------------------------------

JOBS = ("00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b")
BATCH = "00000000-0000-4000-8000-0000000000ba"
DELIVERY = "d" * 32
REFERENCE = [[0.25, 0.75], [0.5, 0.5]]
"""The 'in-process' probabilities of sources 0 and 1."""


def healthy() -> Evidence:
    """A batch of two jobs (sources 0 and 1) with a callback, submitted once, classified once, delivered once."""
    accepted = Call(op="0.1", kind="bulk", method="POST", path="/jobs", api=0, key=0, sources=[0, 1], callback=True,
                    status=202, body={"batch_id": BATCH, "lane": "bulk", "jobs": [
                        {"id": JOBS[0], "filename": "op0.1-n000-src00.jpeg"},
                        {"id": JOBS[1], "filename": "op0.1-n001-src01.jpeg"}]})
    jobs = {job_id: {"id": job_id, "batch_id": BATCH, "status": "succeeded", "deliveries": "1",
                     "filename": f"op0.1-n00{n}-src0{n}.jpeg",
                     "result": json.dumps({"predictions": REFERENCE[n]})} for n, job_id in enumerate(JOBS)}
    counts = {"queued": 0, "running": 0, "succeeded": 2, "failed": 0, "canceled": 0}
    batch = {"total": "2", **{status: str(count) for status, count in counts.items()},
             "callback_url": "http://127.0.0.1:1/hooks", "callback_state": "delivered", "callback_delivery": DELIVERY}
    log = WorkerLog("worker-0#1", None, [("pass", JOBS), ("succeeded", (JOBS[0],)), ("succeeded", (JOBS[1],))])
    return Evidence(
        calls=[accepted], faults=[], logs=[log], jobs=jobs, batches={BATCH: batch},
        api_batches={BATCH: {"counts": counts, "jobs": [{"id": job_id} for job_id in JOBS]}},
        books=dict.fromkeys([*BOOKS, *FAIR_BOOKS], 0),
        gauges=[{"pneuradnet_queue_depth": 0.0, "pneuradnet_batch_size_sum": 2.0}],
        counters={"jobs_succeeded": 2.0},
        received=[Received(DELIVERY, BATCH, counts, 200, answered=True, signed=True, at=10.0)],
        reference=REFERENCE, nemesis_worker_kills=0)


def violated(evidence: Evidence) -> list[str]:
    """The invariants the checker finds violated, in its order."""
    return [verdict.invariant for verdict in Checker(evidence).verdicts() if not verdict.holds]


def test_the_checker_passes_a_healthy_history():
    assert violated(healthy()) == []


def test_the_checker_sees_a_job_that_never_finished_or_succeeded_twice():
    evidence = healthy()
    evidence.jobs[JOBS[0]]["status"] = "running"
    evidence.logs[0].events.append(("succeeded", (JOBS[1],)))
    assert violated(evidence) == ["every accepted job has exactly one terminal state, with its reason when failed",
                                  "each batch's counts equal its jobs' statuses"]


def test_the_checker_sees_a_failed_job_without_a_reason():
    evidence = healthy()
    evidence.jobs[JOBS[0]] |= {"status": "failed", "error": ""}
    evidence.batches[BATCH] |= {"succeeded": "1", "failed": "1"}
    evidence.api_batches[BATCH]["counts"] |= {"succeeded": 1, "failed": 1}
    assert "every accepted job has exactly one terminal state, with its reason when failed" in violated(evidence)


def test_the_checker_sees_an_accepted_job_canceled():
    evidence = healthy()
    evidence.jobs[JOBS[0]]["status"] = "canceled"
    evidence.batches[BATCH] |= {"succeeded": "1", "canceled": "1"}
    evidence.api_batches[BATCH]["counts"] |= {"succeeded": 1, "canceled": 1}
    evidence.counters["jobs_succeeded"] = 1.0
    assert "no accepted job is canceled (no client cancels)" in violated(evidence)


def test_the_checker_sees_a_second_forward_pass_that_no_death_explains():
    evidence = healthy()
    evidence.logs.append(WorkerLog("worker-1#1", None, [("pass", (JOBS[0],))]))
    evidence.gauges[0]["pneuradnet_batch_size_sum"] = 3.0
    assert violated(evidence) == ["images forward-passed are at most the jobs plus MAX_BATCH per killed model process",
                                  "a job is forward-passed more than once only if a model process holding it died"]


def test_the_checker_allows_a_second_pass_after_the_first_ones_process_was_killed():
    evidence = healthy()
    evidence.logs.insert(0, WorkerLog("worker-1#1", 5.0, [("pass", (JOBS[0],))]))
    evidence.nemesis_worker_kills = 1
    verdicts = Checker(evidence).verdicts()
    assert all(verdict.holds for verdict in verdicts)
    assert [len(verdict.notes) for verdict in verdicts if verdict.invariant.startswith("a job is")] == [1]


def test_the_checker_takes_only_a_death_between_two_passes_in_one_run_as_their_cause():
    evidence = healthy()
    evidence.logs = [WorkerLog("worker-0#1", 50.0, [("pass", JOBS), ("pass", JOBS), ("succeeded", (JOBS[0],)),
                                                     ("succeeded", (JOBS[1],))])]
    evidence.nemesis_worker_kills = 1
    assert violated(evidence) == ["a job is forward-passed more than once only if a model process holding it died"]
    evidence.logs[0].events.insert(1, ("death", ()))
    evidence.logs[0].deaths.add("1234")
    assert violated(evidence) == []


def test_the_checker_sees_a_wrong_result_and_a_job_for_another_file():
    evidence = healthy()
    evidence.jobs[JOBS[1]]["result"] = json.dumps({"predictions": [0.5001, 0.4999]})
    evidence.calls[0].sources = [1, 0]
    verdict = next(v for v in Checker(evidence).verdicts() if v.invariant.startswith("every succeeded result"))
    assert not verdict.holds and len(verdict.offending) == 2


def test_the_checker_sees_books_left_over_and_a_queue_gauge_above_0():
    evidence = healthy()
    evidence.books["fair-share in flight"] = 1
    evidence.gauges.append({"pneuradnet_queue_depth": 3.0})
    verdict = next(v for v in Checker(evidence).verdicts() if v.invariant.startswith("at rest"))
    assert not verdict.holds and len(verdict.offending) == 2


def test_the_checker_sees_a_callback_never_acknowledged_or_acknowledged_twice_without_a_cause():
    never = healthy()
    never.received = [Received(DELIVERY, BATCH, {}, 503, answered=True, signed=True, at=10.0)]
    twice = healthy()
    twice.received.append(twice.received[0])
    for evidence in (never, twice):
        assert violated(evidence) == ["each due callback was acknowledged exactly once"]
    twice.faults.append(Fault(1, "kill-worker", "worker-0", at=9.0, wall=0.0))
    assert violated(twice) == []


def test_the_checker_sees_an_idempotent_repeat_answered_with_another_batch():
    evidence = healthy()
    first = evidence.calls[0]
    first.idempotency_key = "key"
    evidence.calls.append(Call(**{**first.__dict__, "repeat": 1, "body": {**first.body, "batch_id": "other"}}))
    assert "idempotent repeats answer one batch" in violated(evidence)


def test_the_checker_sees_a_500_and_a_503_without_retry_after_but_not_a_lost_connection():
    evidence = healthy()
    for status, retry_after, error in ((500, None, None), (503, None, None), (503, "5", None), (None, None, "boom")):
        evidence.calls.append(Call(op="0.2", kind="poll", method="GET", path=f"/batches/{BATCH}", api=1, key=0,
                                   status=status, retry_after=retry_after, error=error, body={}))
    verdict = next(v for v in Checker(evidence).verdicts() if v.invariant.startswith("no answer"))
    assert not verdict.holds and len(verdict.offending) == 2 and verdict.figures["indeterminate"] == 1
