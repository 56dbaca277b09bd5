"""The campaign: starts the fleet and the receiver, runs the clients and the nemesis for its minutes, heals (waits
until the fleet is at rest), collects the evidence, has the checker judge it, and reports."""

import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from redis import Redis
from redis.exceptions import RedisError

from bench.chaos.books import FINISHED, PREFIX, job_statuses, read_books
from bench.chaos.checker import Checker, Evidence, Verdict, read_worker_log
from bench.chaos.clients import Client, kept_body
from bench.chaos.fleet import Fleet, RedisServer
from bench.chaos.history import Call, Fault, accepted_batches, accepted_jobs
from bench.chaos.images import radiographs, reference_results
from bench.chaos.nemesis import Nemesis
from bench.chaos.receiver import Receiver
from bench.chaos.settings import (
    API_KEYS,
    APIS,
    CLIENTS,
    CLOCK_SKEW,
    FOLLOW_SECONDS,
    HTTP_TIMEOUT,
    JOB_TIMEOUT,
    MAX_BATCH,
    MAX_QUEUE,
    PROGRESS_EVERY,
    SKEWED_API,
    SKEWED_WORKER,
    SWEEP_INTERVAL,
    WEBHOOK_TIMEOUT,
    WORKERS,
    heal_bound,
)
from tests.processes import wait_until


class Campaign:
    """The run: the fleet, the receiver, the clients, the nemesis, the heal, and the evidence for the checker."""

    def __init__(self, seed: int, minutes: float, folder: Path) -> None:
        self.seed = seed
        self.minutes = minutes
        self.folder = folder
        self._started = time.monotonic()
        self.stopping = threading.Event()
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self.images = radiographs()
        self.receiver = Receiver(seed, self.clock)
        self.fleet = Fleet(folder, receiver_port=self.receiver.port, clock=self.clock)
        self.nemesis = Nemesis(self)
        self.clients = [Client(self, n) for n in range(CLIENTS)]

    def clock(self) -> float:
        """Seconds since the campaign started."""
        return time.monotonic() - self._started

    def say(self, line: str) -> None:
        print(f"{self.clock():7.1f} s  {line}", flush=True)

    def exchange(self, call: Call, send: Callable[[], httpx.Response]) -> httpx.Response | None:
        """Make one request and record it in the history, answered or not."""
        call.started = self.clock()
        try:
            response: httpx.Response | None = send()
        except httpx.HTTPError as error:
            call.error = f"{type(error).__name__}: {error}"[:300]
            response = None
        else:
            call.status = response.status_code
            call.retry_after = response.headers.get("retry-after")
            call.body = kept_body(call, response)
        call.ended = self.clock()
        with self._lock:
            self.calls.append(call)
        return response

    def run(self) -> dict[str, Any]:
        self.say("classifying the 16 radiographs in this process (the reference results)")
        reference = reference_results(self.images)
        self.receiver.start()
        self.say(f"starting Redis, {APIS} APIs and {WORKERS} workers; logs in {self.folder}")
        self.fleet.start()
        self.say(f"fleet up: Redis {self.fleet.redis.url}, APIs {', '.join(self.fleet.api_urls)}; "
                 f"worker {SKEWED_WORKER} clock {CLOCK_SKEW[0]:+g} s, API {SKEWED_API} clock {CLOCK_SKEW[1]:+g} s")
        run_started = self.clock()
        for client in self.clients:
            client.start()
        self.nemesis.start()
        end = run_started + self.minutes * 60
        while (left := end - self.clock()) > 0:
            self.stopping.wait(min(PROGRESS_EVERY, left))
            if self.clock() < end:
                self.say(self.progress())
        heal = self.heal()
        evidence = collect_evidence(self, reference)
        verdicts = Checker(evidence).verdicts()
        return self.report(heal, evidence, verdicts)

    def progress(self) -> str:
        with self._lock:
            calls = list(self.calls)
        accepted = {job["id"] for call in calls if call.status == 202 for job in call.body["jobs"]}
        statuses = Counter(call.status or "no answer" for call in calls)
        faults = Counter(fault.kind for fault in self.nemesis.faults)
        return (f"{sum(client.operations for client in self.clients)} operations, {len(calls)} requests "
                f"({', '.join(f'{status}: {count}' for status, count in sorted(statuses.items(), key=str))}), "
                f"{len(accepted)} jobs accepted; faults: {dict(faults)}")

    def heal(self) -> dict[str, Any]:
        """Stop the clients and the nemesis, clear the faults, start whatever is down, and wait until the fleet is at
        rest (at most heal_bound); how long each step took."""
        self.say("the run is over: stopping clients and nemesis")
        self.stopping.set()
        stopped = self.clock()
        self.nemesis.join_all()
        for client in self.clients:
            client.join(timeout=2 * HTTP_TIMEOUT + FOLLOW_SECONDS)
        self.fleet.set_fault("")
        self.receiver.healing = True
        self.fleet.ensure_up()
        up = self.clock()
        accepted = accepted_jobs(self.calls)
        with self.fleet.redis.client() as redis:
            unfinished = len(accepted) - sum(status in FINISHED for status in job_statuses(redis, accepted))
        bound = heal_bound(unfinished)
        self.say(f"every process up {up - stopped:.1f} s after the faults stopped; waiting for rest "
                 f"({unfinished} accepted jobs unfinished, at most {bound:.0f} s)")
        healed = True
        try:
            wait_until(lambda: at_rest(self.fleet.redis, accepted, self.calls), timeout=bound, interval=1.0,
                       what="the fleet to finish everything")
        except TimeoutError:
            healed = False
        at = self.clock()
        self.say(f"{'at rest' if healed else 'NOT at rest'} {at - stopped:.1f} s after the faults stopped")
        return {"processes_up_seconds": round(up - stopped, 1), "heal_seconds": round(at - stopped, 1),
                "heal_bound_seconds": round(bound, 1), "healed": healed}

    def report(self, heal: dict[str, Any], evidence: Evidence, verdicts: list[Verdict]) -> dict[str, Any]:
        faults = Counter(fault.kind for fault in self.nemesis.faults)
        return {
            "seed": self.seed, "minutes": self.minutes, "workdir": str(self.folder),
            "replay": f"{sys.executable} -m bench.chaos --minutes {self.minutes:g} --seed {self.seed}",
            "settings": {"WORKERS": WORKERS, "APIS": APIS, "JOB_TIMEOUT": JOB_TIMEOUT, "SWEEP_INTERVAL": SWEEP_INTERVAL,
                         "MAX_QUEUE": MAX_QUEUE, "MAX_BATCH": MAX_BATCH, "WEBHOOK_TIMEOUT": WEBHOOK_TIMEOUT,
                         "clock_skew": {f"worker-{SKEWED_WORKER}": CLOCK_SKEW[0], f"api-{SKEWED_API}": CLOCK_SKEW[1]}},
            "heal": heal,
            "faults": {"counts": dict(faults), "skipped": dict(self.nemesis.skipped),
                       "worst_recovery_seconds": worst_recovery(self.nemesis.faults, evidence),
                       "log": [asdict(fault) for fault in self.nemesis.faults]},
            "figures": evidence.figures(),
            "verdicts": [asdict(verdict) for verdict in verdicts],
            "holds": all(verdict.holds for verdict in verdicts),
            "incarnations": [asdict(incarnation) | {"log": str(incarnation.log)}
                             for incarnation in self.fleet.incarnations],
            "history": [asdict(call) for call in self.calls],
        }

    def close(self) -> None:
        self.stopping.set()
        self.fleet.close()
        self.receiver.stop()


def worst_recovery(faults: list[Fault], evidence: Evidence) -> dict[str, float]:
    """Per fault kind, the longest an accepted job that was waiting or running when such a fault came took to finish
    after it: what the fault cost at worst (the queue's own wait included)."""
    spans = [(stamp(job.get("created_at")), stamp(job.get("finished_at"))) for job in evidence.accepted_records()]
    worst: dict[str, float] = {}
    for fault in faults:
        waits = [finished - fault.wall for created, finished in spans
                 if created is not None and finished is not None and created <= fault.wall < finished]
        worst[fault.kind] = round(max([worst.get(fault.kind, 0.0), *waits]), 1)
    return worst


def stamp(text: str | None) -> float | None:
    """Unix seconds of one of the service's ISO 8601 timestamps (`...Z`)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def at_rest(server: RedisServer, accepted: list[str], calls: list[Call]) -> bool:
    """Every accepted job finished, every callback of their batches settled, and every book and the broker empty."""
    try:
        with server.client() as redis:
            if any(status not in FINISHED for status in job_statuses(redis, accepted)):
                return False
            pipe = redis.pipeline(transaction=False)
            for batch_id in accepted_batches(calls):
                pipe.hget(f"{PREFIX}batch:{batch_id}", "callback_state")
            if any(state in ("pending", "delivering") for state in pipe.execute()):
                return False
            return not any(read_books(redis).values())
    except RedisError:
        return False


def collect_evidence(campaign: Campaign, reference: list[list[float]]) -> Evidence:
    """Read everything once: the logs, Redis, the API."""
    with campaign.fleet.redis.client(timeout=30) as redis:
        jobs = _records(redis, f"{PREFIX}job:*")
        batches = _records(redis, f"{PREFIX}batch:*")
        books = read_books(redis)
        counters = {name: float(value) for name, value in redis.hgetall(f"{PREFIX}metrics").items()}
    api_batches: dict[str, dict[str, Any]] = {}
    gauges = []
    with httpx.Client(timeout=HTTP_TIMEOUT) as http:
        for batch_id, call in accepted_batches(campaign.calls).items():
            try:
                answer = http.get(f"{campaign.fleet.api_urls[0]}/batches/{batch_id}", params={"page_size": 1000},
                                  headers={"Authorization": f"Bearer {API_KEYS[call.key]}"})
                api_batches[batch_id] = answer.json() if answer.status_code == 200 else {
                    "error": f"{answer.status_code} {answer.text[:200]}"}
            except httpx.HTTPError as error:
                api_batches[batch_id] = {"error": str(error)}
        for url in campaign.fleet.api_urls:
            text = http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {API_KEYS[0]}"}).text
            gauges.append({name: float(value) for name, value in re.findall(
                r"^(pneuradnet_queue_depth|pneuradnet_batch_size_sum) (\S+)$", text, re.MULTILINE)})
    return Evidence(calls=list(campaign.calls), faults=list(campaign.nemesis.faults),
                    logs=[read_worker_log(incarnation) for incarnation in campaign.fleet.incarnations],
                    jobs=jobs, batches=batches, api_batches=api_batches, books=books, gauges=gauges,
                    counters=counters, received=list(campaign.receiver.received), reference=reference,
                    nemesis_worker_kills=sum(fault.kind == "kill-worker" for fault in campaign.nemesis.faults))


def _records(redis: Redis, pattern: str) -> dict[str, dict[str, str]]:
    """Every hash whose key is `prefix:kind:{id}` (not its `:image`, `:jobs`... keys), by id."""
    keys = [key for key in redis.scan_iter(pattern, count=1000) if key.count(":") == 2]
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return {key.rsplit(":", 1)[1]: fields for key, fields in zip(keys, pipe.execute(), strict=True) if fields}
