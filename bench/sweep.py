"""What one reconciler sweep costs with a large bulk queued: `.venv/bin/python -m bench.sweep [--jobs 50000]`.

One key's bulk of N jobs is stored and enqueued through fair share (chunks of BULK_CHUNK, one released), on a Redis
database of its own with no worker; then the reconciler sweeps, as every SWEEP_INTERVAL one process of the fleet
does while the bulk drains. Prints the wall and CPU seconds (this process's: the reconciler's own work, Redis'
excluded) of each sweep; the first also loads the scripts.
"""

import argparse
import time

from redis import Redis

from service import reconciler as reconciler_module
from service.dispatch import enqueue_bulk
from service.fairshare import FairShare
from service.images import JobImages
from service.jobstore import JobStore, Lane, Upload
from service.queue import make_celery
from service.reconciler import Reconciler
from service.settings import Settings
from service.workers import WorkerRegistry

URL = "redis://127.0.0.1:6379/5"
BULK_CHUNK = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--sweeps", type=int, default=3)
    args = parser.parse_args()

    Redis.from_url(URL).flushdb()
    store, workers, fair_share = JobStore(URL, ttl=3600), WorkerRegistry(URL), FairShare(URL, ttl=3600)
    celery = make_celery(Settings(redis_url=URL))
    reconciler = Reconciler(url=URL, store=store, images=JobImages(store, None, None), workers=workers,
                            fair_share=fair_share, celery=celery, max_batch=16, bulk_chunk=BULK_CHUNK,
                            sweep_interval=30)
    try:
        _, jobs, _ = store.create_batch([Upload(f"{n}.png", b"png") for n in range(args.jobs)], lane=Lane.BULK,
                                        owner="bench")
        enqueue_bulk([job.id for job in jobs], owner="bench", fair_share=fair_share, window=1,
                     chunk_size=BULK_CHUNK, app=celery)
        reconciler_module.STRANDED_AFTER = 0  # every queued job is old enough to be looked at
        for _ in range(args.sweeps):
            started, cpu = time.perf_counter(), time.process_time()
            found = reconciler.sweep()
            print(f"{args.jobs} jobs queued: a sweep took {time.perf_counter() - started:.3f} s, "
                  f"{time.process_time() - cpu:.3f} s of CPU; redispatched {found.redispatched}")
    finally:
        Redis.from_url(URL).flushdb()
        for part in (reconciler, fair_share, workers, store):
            part.close()


if __name__ == "__main__":
    main()
