"""Cluster-wide metrics kept in Redis, so that one scrape of the API's /metrics shows every worker's work.

Workers add observations to the `pneuradnet:metrics` hash; job counters are counted by the job store's
transition script itself. The API turns the hash into Prometheus families at scrape time.
"""

import logging
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from service.fairshare import FairShare
from service.jobstore import JobStatus, JobStore
from service.workers import WorkerRegistry

log = logging.getLogger(__name__)

HISTOGRAMS: dict[str, tuple[str, tuple[float, ...]]] = {
    "queue_wait_seconds": ("Time from submission to a worker taking the job (on Redis' clock)",
                           (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)),
    "inference_seconds": ("Time of one batched forward pass",
                          (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)),
    "batch_size": ("Images per forward pass", (1, 2, 4, 8, 16, 32, 64, 128, 256)),
    "preparation_seconds": ("Time from a task's start to its forward pass: claiming its jobs, reading and decoding "
                            "their images", (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)),
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
    try:
        store.add_to_metrics(increments)
    except RedisError as error:
        log.warning("%d observations of %s are lost: Redis did not take them (%s)", len(values), name, error)


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
        by_lane = self.store.queued_counts()
        yield GaugeMetricFamily("pneuradnet_queue_depth", "Jobs waiting for a worker", value=sum(by_lane.values()))
        lanes = GaugeMetricFamily("pneuradnet_lane_queue_depth", "Jobs waiting for a worker, by lane",
                                  labels=["lane"])
        for lane, waiting in by_lane.items():
            lanes.add_metric([lane.value], waiting)
        yield lanes
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
