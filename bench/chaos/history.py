"""What a campaign records: every request a client made and what came of it (`Call`, the history), every fault the
nemesis injected, every worker run, every callback the receiver got; and the jobs and batches the history's
202 answers name. Plain records, so that the checker reads them without importing what made them."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Call:
    """One HTTP request a client made, and what came of it: an answer, or an error (no answer: indeterminate)."""

    op: str
    """The operation, `client.number`."""
    kind: str
    """The operation's kind (OP_WEIGHTS), or `poll` for a long-poll of its batch."""
    method: str
    path: str
    api: int
    key: int
    repeat: int = 0
    """Which sending of an idempotent repeat (0, 1)."""
    attempt: int = 1
    idempotency_key: str | None = None
    sources: list[int] = field(default_factory=list)
    """The radiographs uploaded, in order (a POST)."""
    callback: bool = False
    started: float = 0.0
    """Seconds since the campaign started."""
    ended: float = 0.0
    status: int | None = None
    retry_after: str | None = None
    body: Any = None
    """What matters of the answer: a 202's batch and jobs, a problem's type and detail, a batch's counts."""
    error: str | None = None
    """Why no answer came (the connection failed or broke): the request may or may not have been carried out."""


@dataclass
class Fault:
    """One fault the nemesis injected."""

    number: int
    kind: str
    target: str
    at: float
    """Seconds since the campaign started."""
    wall: float
    """Unix time (this host's clock, which is not skewed), to compare with the jobs' timestamps."""
    seconds: float | None = None
    """How long it lasted: until the process was back, Redis answered again, the sleep or the refusal ended."""
    detail: str = ""


@dataclass
class Incarnation:
    """One run of a worker process, with a log of its own."""

    worker: int
    number: int
    log: Path
    started: float
    pid: int = 0
    killed_at: float | None = None
    """When the nemesis SIGKILLed its process group (seconds since the campaign started)."""


@dataclass(frozen=True)
class Received:
    """One callback request the receiver got."""

    delivery_id: str
    batch_id: str
    counts: dict[str, int]
    status: int
    """What the receiver answered."""
    answered: bool
    """The answer was written to the socket (the worker may still have died before reading it)."""
    signed: bool
    at: float


def accepted_jobs(calls: Iterable[Call]) -> list[str]:
    """Every job id some 202 answer named, in order, once."""
    return list(dict.fromkeys(job["id"] for call in calls if call.status == 202 for job in call.body["jobs"]))


def accepted_batches(calls: Iterable[Call]) -> dict[str, Call]:
    """Every batch some 202 answer named, with the first such answer."""
    batches: dict[str, Call] = {}
    for call in calls:
        if call.status == 202:
            batches.setdefault(call.body["batch_id"], call)
    return batches
