"""The checker: reads the evidence (the history, the workers' logs, Redis by its literal key names, the API) once
the fleet is at rest, and says for every answer 202 whether each invariant holds, naming what broke it.
It imports nothing of api/, service/ or worker/, so that it cannot share their bugs."""

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from bench.chaos.books import FINISHED, STATUSES
from bench.chaos.history import Call, Fault, Incarnation, Received, accepted_batches, accepted_jobs
from bench.chaos.settings import LEASE_SECONDS, MAX_BATCH, RESULT_TOLERANCE, SOURCE_IN_NAME, WEBHOOK_TIMEOUT

ALLOWED_4XX = {409: "idempotency-in-progress", 429: "queue-full"}
"""The refusals a client is told to retry; any other 4xx to these clients' well-formed requests is a fault."""
DEATH = re.compile(r"pid:(\d+) exited with 'signal|model process \S+:(\d+) died under a task"
                   r"|Task \S+\[([^\]]+)\] cannot be acknowledged after a connection loss")
"""A worker log's line saying that a model process died: billiard's word for a child killed by a signal, the
service's for one its parent saw die under a task, or Celery's when it SIGTERMs the child running a task whose
broker connection was lost (billiard then says nothing: the termination is its own). Its group names the pid, or
the task."""


@dataclass
class WorkerLog:
    """What one worker run's log says: its forward passes, job events and model-process deaths, in order."""

    name: str
    killed_at: float | None
    """When the nemesis SIGKILLed it, if it did."""
    events: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    """(kind, job ids) in the log's order: `pass`, `succeeded`, `failed`, or `death` (no job ids)."""
    deaths: set[str] = field(default_factory=set)
    """Model processes that died under it, by pid or by the task they were running."""
    unreadable: int = 0
    """Lines that were not JSON (a line cut by a SIGKILL, a library's print)."""


def read_worker_log(incarnation: Incarnation) -> WorkerLog:
    """The events of one worker run's JSON log (LOG_FORMAT=json: one object per line)."""
    log = WorkerLog(f"worker-{incarnation.worker}#{incarnation.number}", incarnation.killed_at)
    for line in incarnation.log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            log.unreadable += 1
            continue
        if not isinstance(record, dict):
            continue
        event = record.get("event")
        if event == "forward-pass":
            log.events.append(("pass", tuple(record.get("job_ids", ()))))
        elif event in ("succeeded", "failed"):
            log.events.append((event, (record["job_id"],)))
        elif death := DEATH.search(str(record.get("message", ""))):
            log.deaths.add(next(group for group in death.groups() if group))
            log.events.append(("death", ()))
    return log


@dataclass
class Evidence:
    """Everything the checker reads, gathered once the fleet is at rest (or the heal gave up)."""

    calls: list[Call]
    faults: list[Fault]
    logs: list[WorkerLog]
    jobs: dict[str, dict[str, str]]
    """Every job record in Redis, by id."""
    batches: dict[str, dict[str, str]]
    """Every batch record in Redis, by id."""
    api_batches: dict[str, dict[str, Any]]
    """GET /batches/{id}?page_size=1000 of every accepted batch (its owner's key), or {"error": ...}."""
    books: dict[str, int]
    """Entries left in each book (BOOKS, FAIR_BOOKS)."""
    gauges: list[dict[str, float]]
    """Each API's /metrics: pneuradnet_queue_depth, pneuradnet_batch_size_sum."""
    counters: dict[str, float]
    """The metrics hash."""
    received: list[Received]
    """Every callback request the receiver got."""
    reference: list[list[float]]
    """Each radiograph's probabilities, classified in the campaign's process."""
    nemesis_worker_kills: int
    """Worker process groups SIGKILLed: one model process each."""

    def accepted_records(self) -> list[dict[str, str]]:
        """The record of every job a 202 named ({} where there is none)."""
        return [self.jobs.get(job_id, {}) for job_id in accepted_jobs(self.calls)]

    def figures(self) -> dict[str, Any]:
        """The campaign in numbers, for the report."""
        accepted = self.accepted_records()
        posts = [call for call in self.calls if call.method == "POST"]
        return {
            "operations": len({call.op for call in self.calls}),
            "requests": len(self.calls), "posts": len(posts),
            "answers": dict(Counter(str(call.status) for call in self.calls if call.status is not None)),
            "no_answer": sum(call.status is None for call in self.calls),
            "accepted_batches": len(accepted_batches(self.calls)), "accepted_jobs": len(accepted),
            "accepted_by_status": dict(Counter(job.get("status", "missing") for job in accepted)),
            "failed_by_reason": dict(Counter(str(_problem(job).get("type", "?")).rsplit(":", 1)[-1]
                                             for job in accepted if job.get("status") == "failed")),
            "job_records": len(self.jobs),
            "forward_pass_images_metric": self.gauges[0].get("pneuradnet_batch_size_sum") if self.gauges else None,
            "forward_pass_images_logged": sum(len(ids) for log in self.logs for kind, ids in log.events
                                              if kind == "pass"),
            "model_processes_killed": self.nemesis_worker_kills + len(self.self_deaths()),
            "callbacks_received": len(self.received),
            "worker_runs": len(self.logs),
            "unreadable_log_lines": sum(log.unreadable for log in self.logs),
        }

    def self_deaths(self) -> set[str]:
        """Model processes whose death their worker's log tells (stopped by their parent on a lost broker
        connection, by the hard time limit, by a signal), as `run:pid`."""
        return {f"{log.name}:{pid}" for log in self.logs for pid in log.deaths}


@dataclass
class Verdict:
    """Whether one invariant held, with its figures and the ids that broke it."""

    invariant: str
    holds: bool
    figures: dict[str, Any]
    offending: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What is allowed but worth knowing (a repeat that a killed process explains)."""


class Checker:
    """The invariants, each over every 202 answer of the history; independent of the service's code."""

    def __init__(self, evidence: Evidence) -> None:
        self.e = evidence
        self.accepted = accepted_jobs(evidence.calls)
        self.batches = accepted_batches(evidence.calls)
        self.succeeded_events: Counter[str] = Counter(
            job_id for log in evidence.logs for kind, ids in log.events if kind == "succeeded" for job_id in ids)

    def verdicts(self) -> list[Verdict]:
        return [self.one_terminal_state(), self.none_canceled(), self.forward_passes_bounded(), self.passes_per_job(),
                self.results_match(), self.batch_counts(), self.at_rest(), self.callbacks_once(),
                self.idempotent_repeats(), self.answers()]

    def one_terminal_state(self) -> Verdict:
        """Every accepted job ends succeeded, failed (with its reason) or canceled, and succeeds at most once."""
        offending = []
        for job_id in self.accepted:
            job = self.e.jobs.get(job_id)
            if job is None or job.get("status") not in FINISHED:
                offending.append(f"{job_id}: {job.get('status') if job else 'no record'}")
            elif job["status"] == "failed" and not _problem(job).get("detail"):
                offending.append(f"{job_id}: failed without a reason")
            elif job["status"] == "succeeded" and not job.get("result"):
                offending.append(f"{job_id}: succeeded without a result")
            if self.succeeded_events[job_id] > 1:
                offending.append(f"{job_id}: {self.succeeded_events[job_id]} 'succeeded' events in the worker logs")
        succeeded_records = sum(job.get("status") == "succeeded" for job in self.e.jobs.values())
        counted = self.e.counters.get("jobs_succeeded", 0.0)
        if counted != succeeded_records:
            offending.append(f"metrics: jobs_succeeded {counted:g} but {succeeded_records} records succeeded")
        return Verdict("every accepted job has exactly one terminal state, with its reason when failed",
                       not offending, {"accepted_jobs": len(self.accepted),
                                       "by_status": dict(Counter(self.e.jobs.get(j, {}).get("status", "missing")
                                                                 for j in self.accepted)),
                                       "jobs_succeeded_counter": counted, "succeeded_records": succeeded_records},
                       offending)

    def none_canceled(self) -> Verdict:
        """No client cancels anything, so an accepted job canceled is work the service acknowledged and dropped (a
        withdrawn admission whose batch a repeat was answered with, say)."""
        offending = [f"{job_id} (batch {self.e.jobs[job_id].get('batch_id')})" for job_id in self.accepted
                     if self.e.jobs.get(job_id, {}).get("status") == "canceled"]
        return Verdict("no accepted job is canceled (no client cancels)", not offending,
                       {"canceled": len(offending)}, offending)

    def forward_passes_bounded(self) -> Verdict:
        """Images forward-passed, by the batch_size histogram and by the logs, are at most the jobs that reached a
        worker plus MAX_BATCH per model process killed."""
        reached = sum(int(job.get("deliveries", 0)) >= 1 for job in self.e.jobs.values())
        killed = self.e.nemesis_worker_kills + len(self.e.self_deaths())
        bound = reached + MAX_BATCH * killed
        metric = self.e.gauges[0].get("pneuradnet_batch_size_sum", 0.0) if self.e.gauges else 0.0
        logged = sum(len(ids) for log in self.e.logs for kind, ids in log.events if kind == "pass")
        offending = [f"{name}: {value:g} > {bound}" for name, value in (("batch_size sum", metric),
                                                                        ("logged passes", logged)) if value > bound]
        return Verdict("images forward-passed are at most the jobs plus MAX_BATCH per killed model process",
                       not offending, {"batch_size_sum": metric, "logged_images_passed": logged,
                                       "jobs_reaching_a_worker": reached, "model_processes_killed_by_nemesis":
                                       self.e.nemesis_worker_kills, "model_processes_died_otherwise":
                                       sorted(self.e.self_deaths()), "bound": bound}, offending)

    def passes_per_job(self) -> Verdict:
        """A job forward-passed more than once is allowed only if a pass of it found no outcome because its model
        process died after it (killed by the nemesis, or by its parent), or Redis was away longer than a lease."""
        passes: defaultdict[str, list[tuple[WorkerLog, int]]] = defaultdict(list)
        for log in self.e.logs:
            for index, (kind, ids) in enumerate(log.events):
                if kind == "pass":
                    for job_id in ids:
                        passes[job_id].append((log, index))
        redis_away = max([f.seconds or 0.0 for f in self.e.faults if f.kind == "restart-redis"] or [0.0])
        offending, notes = [], []
        repeated = {job_id: places for job_id, places in passes.items() if len(places) > 1}
        for job_id, places in repeated.items():
            finished = [log.name for log, index in places if _pass_ended(log, index, job_id)]
            lost = [(log.name, _excuse(log, index, job_id, redis_away)) for log, index in places
                    if not _pass_ended(log, index, job_id)]
            said = "; ".join(f"{name}'s pass: {excuse or 'UNEXPLAINED'}" for name, excuse in lost)
            line = f"{job_id}: {len(places)} passes, outcome stored by {', '.join(finished) or 'none'}; {said}"
            (offending if len(finished) > 1 or not all(excuse for _, excuse in lost) else notes).append(line)
        return Verdict("a job is forward-passed more than once only if a model process holding it died",
                       not offending, {"jobs_passed": len(passes), "jobs_passed_more_than_once": len(repeated),
                                       "longest_redis_restart_seconds": round(redis_away, 2)}, offending, notes)

    def results_match(self) -> Verdict:
        """Every succeeded result equals this process's result for its image, within RESULT_TOLERANCE; each job's
        file is the one the client sent in that place."""
        offending = []
        worst = 0.0
        for call in self.batches.values():
            if [_source(job["filename"]) for job in call.body["jobs"]] != call.sources:
                offending.append(f"batch {call.body['batch_id']}: its jobs' files are not the upload's, in order")
        for job_id in self.accepted:
            job = self.e.jobs.get(job_id, {})
            if job.get("status") != "succeeded":
                continue
            source = _source(job.get("filename", ""))
            predictions = json.loads(job["result"]).get("predictions", [])
            if source is None or len(predictions) != len(self.e.reference[source]):
                offending.append(f"{job_id}: {job.get('filename')} gave {predictions}")
                continue
            difference = max(abs(a - b) for a, b in zip(predictions, self.e.reference[source], strict=True))
            worst = max(worst, difference)
            if difference > RESULT_TOLERANCE:
                offending.append(f"{job_id}: {job['filename']} differs by {difference:.2e}")
        return Verdict("every succeeded result equals the in-process result for its image", not offending,
                       {"largest_difference": worst, "tolerance": RESULT_TOLERANCE}, offending)

    def batch_counts(self) -> Verdict:
        """Each accepted batch's counts (its record and the API's answer) equal its jobs' statuses, its total its
        number of jobs, and its jobs are the ones its 202 named."""
        offending = []
        by_batch: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for job in self.e.jobs.values():
            by_batch[job.get("batch_id", "")][job.get("status", "")] += 1
        for batch_id, call in self.batches.items():
            record, answer = self.e.batches.get(batch_id), self.e.api_batches.get(batch_id, {})
            if record is None or "error" in answer:
                offending.append(f"{batch_id}: record {'missing' if record is None else 'ok'}, API {answer}")
                continue
            actual = {status: by_batch[batch_id][status] for status in STATUSES}
            stored = {status: int(record.get(status, 0)) for status in STATUSES}
            answered = {status: int(answer["counts"].get(status, 0)) for status in STATUSES}
            ids = [job["id"] for job in answer["jobs"]]
            if not stored == answered == actual or len({int(record["total"]), sum(actual.values()), len(ids)}) > 1:
                offending.append(f"{batch_id}: record {stored} total {record['total']}, API {answered}, "
                                 f"jobs {actual}")
            if ids != [job["id"] for job in call.body["jobs"]]:
                offending.append(f"{batch_id}: the API lists other jobs than its 202 named")
        return Verdict("each batch's counts equal its jobs' statuses", not offending,
                       {"batches": len(self.batches)}, offending)

    def at_rest(self) -> Verdict:
        """At rest: no places reserved, nothing running or queued, no fair-share chunk, no callback due, nothing on
        the broker, and every API's queue gauge 0."""
        offending = [f"{name}: {count}" for name, count in self.e.books.items() if count]
        offending += [f"api-{n}: queue depth {gauge.get('pneuradnet_queue_depth')}"
                      for n, gauge in enumerate(self.e.gauges) if gauge.get("pneuradnet_queue_depth") != 0]
        depths = [gauge.get("pneuradnet_queue_depth") for gauge in self.e.gauges]
        return Verdict("at rest, the books are empty and the queue gauge is 0", not offending,
                       {**self.e.books, "queue_depth": depths}, offending)

    def callbacks_once(self) -> Verdict:
        """Each accepted batch with a callback whose jobs have all finished is delivered, and its delivery id was
        answered 2xx; more than once only if a worker or Redis went away meanwhile. Every request was signed."""
        answered: defaultdict[str, list[Received]] = defaultdict(list)
        for received in self.e.received:
            if received.answered and 200 <= received.status < 300:
                answered[received.delivery_id].append(received)
        offending = [f"unsigned or badly signed callback at {r.at:.1f} s" for r in self.e.received if not r.signed]
        notes = []
        due = 0
        for batch_id in self.batches:
            record = self.e.batches.get(batch_id, {})
            if "callback_url" not in record:
                continue
            finished = sum(int(record.get(status, 0)) for status in FINISHED)
            if finished < int(record.get("total", 0)):
                offending.append(f"{batch_id}: has a callback and {finished}/{record.get('total')} jobs finished")
                continue
            due += 1
            delivery = record.get("callback_delivery", "")
            oks = answered.get(delivery, [])
            if record.get("callback_state") != "delivered" or not oks:
                offending.append(f"{batch_id}: callback {record.get('callback_state')}, delivery {delivery!r} "
                                 f"answered 2xx {len(oks)} times")
                continue
            final = {status: int(record.get(status, 0)) for status in STATUSES}
            if all(received.counts != final for received in oks):
                offending.append(f"{batch_id}: no delivery carried its final counts {final}")
            if len(oks) > 1:
                causes = self._faults_between(oks[0].at - 3 * WEBHOOK_TIMEOUT, oks[-1].at)
                line = f"{batch_id}: delivery {delivery} answered 2xx {len(oks)} times; meanwhile: {causes or 'none'}"
                (notes if causes else offending).append(line)
        return Verdict("each due callback was acknowledged exactly once", not offending,
                       {"callbacks_due": due, "requests_received": len(self.e.received),
                        "answered_2xx": sum(len(oks) for oks in answered.values()),
                        "duplicates": sum(len(oks) - 1 for oks in answered.values())}, offending, notes)

    def _faults_between(self, start: float, end: float) -> list[str]:
        """The faults that can make a delivery repeat (a worker or its connections gone, Redis away) in a window."""
        return [f"{fault.kind}@{fault.at:.1f}s" for fault in self.e.faults
                if fault.kind in ("kill-worker", "restart-redis", "client-kill", "slow-redis")
                and start <= fault.at <= end]

    def idempotent_repeats(self) -> Verdict:
        """Every 202 to one key's Idempotency-Key names the same batch and the same jobs."""
        answers: defaultdict[tuple[int, str], set[tuple[str, tuple[str, ...]]]] = defaultdict(set)
        for call in self.e.calls:
            if call.status == 202 and call.idempotency_key:
                answers[(call.key, call.idempotency_key)].add(
                    (call.body["batch_id"], tuple(job["id"] for job in call.body["jobs"])))
        offending = [f"{key}: {sorted(batch for batch, _ in seen)}" for (_, key), seen in answers.items()
                     if len(seen) > 1]
        return Verdict("idempotent repeats answer one batch", not offending,
                       {"idempotency_keys_answered": len(answers)}, offending)

    def answers(self) -> Verdict:
        """No 5xx but 503 with Retry-After, and no 4xx but the retried refusals; a request without an answer (an API
        killed, a connection dropped) is indeterminate, not an answer."""
        offending = []
        for call in self.e.calls:
            if call.status is None:
                continue
            kind = str((call.body or {}).get("type", "")).rsplit(":", 1)[-1] if isinstance(call.body, dict) else ""
            wrong = (call.status >= 500 and (call.status != 503 or not call.retry_after)) or \
                (400 <= call.status < 500 and ALLOWED_4XX.get(call.status) != kind)
            if wrong:
                offending.append(f"op {call.op} {call.method} {call.path} api-{call.api}: {call.status} {call.body}")
        return Verdict("no answer was a 5xx other than 503 with Retry-After (nor an unexpected 4xx)", not offending,
                       {"answers": dict(Counter(str(call.status) for call in self.e.calls if call.status)),
                        "indeterminate": sum(call.status is None for call in self.e.calls)}, offending)


def _problem(job: dict[str, str]) -> dict[str, Any]:
    try:
        problem = json.loads(job.get("error") or "{}")
    except ValueError:
        return {}
    return problem if isinstance(problem, dict) else {}


def _source(filename: str) -> int | None:
    match = SOURCE_IN_NAME.search(filename)
    return int(match.group(1)) if match else None


def _until_next(log: WorkerLog, index: int, job_id: str) -> tuple[list[str], str | None]:
    """The kinds of the events that follow a pass of a job in its log up to the next one that names the job, and
    that one's kind (None if the log ends first)."""
    between = []
    for kind, ids in log.events[index + 1:]:
        if job_id in ids:
            return between, kind
        between.append(kind)
    return between, None


def _pass_ended(log: WorkerLog, index: int, job_id: str) -> bool:
    """Whether the same log shows the job's outcome stored right after this pass (before another pass of it)."""
    return _until_next(log, index, job_id)[1] in ("succeeded", "failed")


def _excuse(log: WorkerLog, index: int, job_id: str, redis_away: float) -> str:
    """Why a pass that stored no outcome may have lost its work ('' if nothing explains it): a model process of
    its worker died before the job's next event in the log, the log ends with the worker SIGKILLed, or Redis was
    away longer than a lease."""
    between, following = _until_next(log, index, job_id)
    if "death" in between:
        return "a model process of its worker died after it"
    if following is None and log.killed_at is not None:
        return f"its worker was SIGKILLed at {log.killed_at:.1f} s"
    if redis_away > LEASE_SECONDS:
        return f"Redis was away {redis_away:.1f} s, longer than a lease"
    return ""
