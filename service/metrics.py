"""Cluster-wide metrics kept in Redis, so that one scrape of the API's /metrics shows every worker's work.

Workers add observations to the `pneuradnet:metrics` hash; job counters are counted by the job store's
transition script itself. The API turns the hash into Prometheus families at scrape time.
"""

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from service.fairshare import FairShare
from service.jobstore import Job, JobStatus, JobStore, Lane
from service.problems import PROBLEM_TYPE_PREFIX
from service.workers import WorkerRegistry

log = logging.getLogger(__name__)

HISTOGRAMS: dict[str, tuple[str, tuple[float, ...]]] = {
    "queue_wait_seconds": ("Time from submission to a worker taking the job (on Redis' clock)",
                           (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)),
    "inference_seconds": ("Time of one batched forward pass",
                          (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)),
    "batch_size": ("Images per forward pass", (1, 2, 4, 8, 16, 32, 64, 128, 256)),
    "preparation_seconds": ("Time the model waited for a forward pass's images: from a task's start (claiming, "
                            "reading, decoding) or from the previous pass (what read-ahead did not hide)",
                            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)),
    "between_tasks_seconds": ("Time a model process waited between one task and the next, when the next came "
                              "within BUSY_GAP (a longer wait is an empty queue)",
                              (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)),
}
"""Histogram name -> (help, bucket upper bounds)."""


def observe(store: JobStore, name: str, values: list[float]) -> None:
    """Add observations to a histogram in one round trip. If Redis does not take them (it does not answer, or it
    is full), they are dropped and logged: a measurement never costs a job its result."""
    if not values:
        return
    _, buckets = HISTOGRAMS[name]
    increments: defaultdict[str, float] = defaultdict(float)
    for value in values:
        increments[f"{name}:count"] += 1
        increments[f"{name}:sum"] += value
        for bound in buckets:
            if value <= bound:
                increments[f"{name}:le:{bound:g}"] += 1
    _add(store, increments, f"{len(values)} observations of {name}")


FINISHED = "finished:"
"""Prefix of the counters of jobs a worker's task finished (succeeded or failed), one per lane: `finished:<lane>`."""
FAILURES = "failures:"
"""Prefix of the metrics hash's failure counters, one per reason: `failures:<problem kind>`."""


def count_finished(store: JobStore, jobs: Iterable[Job]) -> None:
    """Count the jobs a task finished, by lane (the job counters of the transition script have no lane), in one
    round trip; lost and logged if Redis does not take them, like observe()."""
    _count(store, FINISHED, Counter(job.lane.value for job in jobs))


def count_failures(store: JobStore, errors: Iterable[dict[str, object]]) -> None:
    """Count failed jobs by reason (their problem's kind), in one round trip; lost and logged if Redis does not take
    them, like observe()."""
    _count(store, FAILURES, Counter(str(error["type"]).removeprefix(PROBLEM_TYPE_PREFIX) for error in errors))


def _count(store: JobStore, prefix: str, counts: Counter[str]) -> None:
    if counts:
        _add(store, {f"{prefix}{name}": count for name, count in counts.items()}, f"{counts.total()} {prefix}* events")


def _add(store: JobStore, increments: Mapping[str, float], what: str) -> None:
    """Add to the metrics hash in one round trip; if Redis does not take it (it does not answer, or it is full),
    `what` is lost and logged: a measurement never costs a job its result."""
    try:
        store.add_to_metrics(increments)
    except RedisError as error:
        log.warning("%s are lost: Redis did not take them (%s)", what, error)


class ReadinessCollector(Collector):
    """What /readyz says, as a gauge, so that an alert needs no HTTP probe: 1 when Redis answers and a model process
    is alive, 0 otherwise. Registered apart from StoreCollector, and first: it never raises."""

    def __init__(self, store: JobStore, workers: WorkerRegistry) -> None:
        self.store = store
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        try:
            self.store.ping()
            ready = self.workers.count() > 0
        except RedisError:
            ready = False
        yield GaugeMetricFamily("pneuradnet_ready", "1 when /readyz answers 200: Redis answers and a model process is "
                                "alive; else 0", value=1.0 if ready else 0.0)


class StoreCollector(Collector):
    """Reads the metrics hash and the registries at each scrape."""

    def __init__(self, store: JobStore, workers: WorkerRegistry, fair_share: FairShare) -> None:
        self.store = store
        self.workers = workers
        self.fair_share = fair_share

    def collect(self) -> Iterator[Metric]:
        values = self.store.metrics()
        jobs = CounterMetricFamily("pneuradnet_jobs", "Jobs by event: submitted, or the status they moved to",
                                   labels=["event"])
        for event in ("submitted", *(status.value for status in JobStatus if status is not JobStatus.QUEUED)):
            jobs.add_metric([event], values.get(f"jobs_{event}", 0.0))
        yield jobs
        failures = CounterMetricFamily("pneuradnet_job_failures", "Jobs that failed, by reason (the kind of their "
                                       "problem, e.g. invalid-image, job-timeout, worker-lost)", labels=["reason"])
        for field, count in sorted(values.items()):
            if field.startswith(FAILURES):
                failures.add_metric([field.removeprefix(FAILURES)], count)
        yield failures
        finished = CounterMetricFamily("pneuradnet_lane_jobs_finished", "Jobs a worker's task finished (succeeded or "
                                       "failed), by lane", labels=["lane"])
        for lane in Lane:
            finished.add_metric([lane.value], values.get(f"{FINISHED}{lane.value}", 0.0))
        yield finished
        by_lane = self.store.queued_counts()
        yield GaugeMetricFamily("pneuradnet_queue_depth", "Jobs waiting for a worker", value=sum(by_lane.values()))
        lanes = GaugeMetricFamily("pneuradnet_lane_queue_depth", "Jobs waiting for a worker, by lane",
                                  labels=["lane"])
        for lane, waiting in by_lane.items():
            lanes.add_metric([lane.value], waiting)
        yield lanes
        oldest = GaugeMetricFamily("pneuradnet_oldest_queued_seconds", "How long the job waiting longest in each lane "
                                   "has waited (on Redis' clock), 0 when none waits", labels=["lane"])
        for lane, age in self.store.oldest_queued_ages().items():
            oldest.add_metric([lane.value], age)
        yield oldest
        yield GaugeMetricFamily("pneuradnet_bulk_keys_waiting", "API keys with bulk work waiting or running",
                                value=self.fair_share.keys_waiting())
        yield GaugeMetricFamily("pneuradnet_jobs_running", "Jobs a worker holds now", value=self.store.running_count())
        yield GaugeMetricFamily("pneuradnet_workers_live", "Model processes that announced themselves lately",
                                value=self.workers.count())
        used, budget = self.store.memory()
        yield GaugeMetricFamily("pneuradnet_redis_used_bytes", "Memory Redis uses (INFO used_memory)", value=used)
        yield GaugeMetricFamily("pneuradnet_redis_budget_bytes", "Most bytes admission lets Redis hold "
                                "(REDIS_BUDGET_BYTES, or 90% of its maxmemory); 0: no budget", value=budget)
        for name, (description, bounds) in HISTOGRAMS.items():
            cumulative = [(f"{bound:g}", values.get(f"{name}:le:{bound:g}", 0.0)) for bound in bounds]
            count = values.get(f"{name}:count", 0.0)
            yield HistogramMetricFamily(f"pneuradnet_{name}", description, buckets=[*cumulative, ("+Inf", count)],
                                        sum_value=values.get(f"{name}:sum", 0.0))
