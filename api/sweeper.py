"""The API's turn at reconciling the queue's books: it offers every half SWEEP_INTERVAL, and sweeps when the
lock in Redis says it is its turn (service/reconciler.py), so a fleet with no worker up still heals."""

import asyncio
import logging
import os
import socket

from starlette.concurrency import run_in_threadpool

from service.reconciler import Reconciler

log = logging.getLogger(__name__)


async def sweep_periodically(reconciler: Reconciler, *, interval: float) -> None:
    name = f"api:{socket.gethostname()}:{os.getpid()}"
    while True:
        await asyncio.sleep(interval / 2)
        try:
            await run_in_threadpool(reconciler.sweep_if_due, name)
        except Exception:  # Redis away, or a bug: the next turn tries again; a sweep never costs the API
            log.warning("the reconciler's sweep failed", exc_info=True)
