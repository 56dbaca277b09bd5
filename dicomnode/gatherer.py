"""Gathering the jobs a node stores for one owner into chunks before they go to fair share.

Instances arrive one at a time; handed to fair share one by one, each would be a task and a forward pass of its
own. Held here for at most GATHER_SECONDS, the jobs of one owner that arrive together (a study sent over several
associations, a backlog flowing in) share a task of up to MAX_BATCH. A job waiting here is already stored and
acknowledged: if the node dies before sending it, the reconciler finds it queued with no task and dispatches it.
"""

import threading
import time
from collections.abc import Callable

GATHER_SECONDS = 0.5
"""Longest a stored job waits in the node for others of its owner to share its task: next to a study's quiet time
(DICOM_STUDY_TIMEOUT, 30 s), nothing; against a forward pass per instance, up to MAX_BATCH times fewer tasks."""


class ChunkGatherer:
    def __init__(self, dispatch: Callable[[str, list[str]], None], *, max_batch: int,
                 wait: float = GATHER_SECONDS) -> None:
        """`dispatch(owner, job_ids)` sends a chunk; it is called on the adding thread (a full chunk) or on the
        gatherer's own (a chunk whose first job has waited `wait` seconds), and must not raise."""
        self._dispatch = dispatch
        self._max_batch = max_batch
        self._wait = wait
        self._lock = threading.Lock()
        self._pending: dict[str, list[str]] = {}
        self._first_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send_due, name="chunk-gatherer", daemon=True)
        self._thread.start()

    def add(self, owner: str, job_id: str) -> None:
        with self._lock:
            pending = self._pending.setdefault(owner, [])
            pending.append(job_id)
            self._first_at.setdefault(owner, time.monotonic())
            full = self._take(owner) if len(pending) >= self._max_batch else None
        if full:
            self._dispatch(owner, full)

    def close(self) -> None:
        """Send what is gathered, and stop."""
        self._stop.set()
        self._thread.join()
        with self._lock:
            chunks = [(owner, self._take(owner)) for owner in list(self._pending)]
        for owner, job_ids in chunks:
            self._dispatch(owner, job_ids)

    def _send_due(self) -> None:
        while not self._stop.wait(self._wait / 4):
            due_before = time.monotonic() - self._wait
            with self._lock:
                chunks = [(owner, self._take(owner)) for owner, first in list(self._first_at.items())
                          if first <= due_before]
            for owner, job_ids in chunks:
                self._dispatch(owner, job_ids)

    def _take(self, owner: str) -> list[str]:
        """The owner's gathered jobs, taken out (the lock held)."""
        self._first_at.pop(owner, None)
        return self._pending.pop(owner, [])
