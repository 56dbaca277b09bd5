"""A fault campaign with an invariant checker, in the spirit of Jepsen's checkers and FoundationDB's simulation:
`.venv/bin/python -m bench.chaos --minutes M [--seed S] [--report out.json] [--workdir DIR]`.

It prints its seed first (random unless given), then a line per fault and a progress line every PROGRESS_EVERY
seconds, then the checker's verdict per invariant with its figures; the exit status is 0 only if every invariant
holds. The seed decides everything the campaign decides: what each client sends (kind, images, lane, callback,
Idempotency-Key), to which API, how long it pauses, which fault comes when and where, which callbacks the receiver
answers 503. Real timing varies from run to run, so a replay decides the same and meets another interleaving.

The fleet, all on loopback, all started here and stopped whatever happens (Ctrl-C and SIGTERM included):
- a redis-server with an append-only file (fsync every second, no snapshots) in the work folder, on a free port;
- APIS API processes (uvicorn) and WORKERS Celery workers, each one model process with one inference thread (in a
  session of its own, so that its whole process group can be SIGKILLed);
- settings for fast healing (JOB_TIMEOUT, SWEEP_INTERVAL), three API keys, callbacks allowed to the campaign's
  receiver, JSON logs (each forward pass and each job event is a line), and PNEURADNET_FAULT_FILE
  (service/faults.py) for a broker that refuses tasks.

Clients: CLIENTS threads, one API key each, send interactive images, bulk batches of loose images, ZIPs, and
idempotent repeats (the same Idempotency-Key twice, one after the other and at the same time), some with a
callback_url, to either API; they retry 503, 429, 409 and lost connections after Retry-After, with the same key.
Every request and what came of it is the history (`Call`).

The nemesis: every few seconds (exponential gaps), one of FAULT_WEIGHTS: SIGKILL a worker's process group or an
API (started again 1-5 s later; never the last one up), a Redis restart (SHUTDOWN, up to 3 s down, then started on the
same append-only file: what it acknowledged comes back), CLIENT KILL TYPE normal (every connection dropped), DEBUG
SLEEP (a Redis that answers nothing for up to 3 s), a broker that refuses every task for a few seconds.

Clock skew, simulated in Python (libfaketime breaks Python's sleeps and condition waits): SKEWED_WORKER and
SKEWED_API start with a `sitecustomize.py` first on PYTHONPATH that moves `time.time()` and `time.time_ns()` by a
constant (CLOCK_SKEW). What is skewed: everything in those processes that reads the time through the `time` module
(kombu's unacknowledged-message timestamps and restore, log record times, the callback signature's `t=`). What is
not: C-level clocks (`datetime.now()`, so job timestamps; Redis' TIME; monotonic clocks, so sleeps and timeouts).
The service compares times across hosts only on Redis' clock, so the skew must change nothing the checker sees;
the skewed worker's kombu may hand out another worker's task early, which its jobs' leases make harmless.

Heal: after the run, clients and nemesis stop, faults are cleared, every process is made to run, and the campaign
waits (at most `heal_bound`, computed from the settings) until every accepted job has finished, every callback due
is settled and the books and the broker are empty. Then the checker (`Checker`) reads the history, the workers'
logs, Redis by its literal key names and the API, and says, for every answer 202, whether each invariant holds.
It imports nothing of api/, service/ or worker/, so that it cannot share their bugs. The invariants:
1. every accepted job ends in exactly one terminal state, failed ones with their reason: its record, the workers'
   `succeeded` events (one at most) and the store's jobs_succeeded counter agree; and none is canceled (no client
   cancels anything);
2. images forward-passed (the batch_size histogram's sum, and the workers' logs) are at most the jobs plus MAX_BATCH
   per model process killed; a job passed twice had a pass whose process died before storing its outcome;
3. every succeeded result equals this process's own result for its image (within RESULT_TOLERANCE);
4. each batch's counts (its record, the API's answer) equal its jobs' statuses;
5. at rest, no queue places are reserved, nothing is running, queued, in fair share, due or on the broker, and every
   API's queue gauge is 0;
6. each due callback was answered 2xx under its delivery id, more than once only after a fault that explains it;
7. idempotent repeats are answered with one batch;
8. no answer was a 5xx other than 503 with Retry-After (a request without an answer is indeterminate, not counted).
"""

import argparse
import contextlib
import importlib.metadata
import io
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from pneuradnet.client import verify_webhook
from pneuradnet.webhooks import WebhookSignatureError
from tests.processes import ROOT, STARTUP_TIMEOUT, free_port, wait_for_api, wait_until

# --- the fleet's settings -------------------------------------------------------------------------------------------

WORKERS = 2
"""Celery worker processes, each with one model process (WORKER_CONCURRENCY=1)."""
APIS = 2
"""API processes; clients pick one at random for every request."""
JOB_TIMEOUT = 10
"""Seconds a task may run: short, so that leases and the broker's redelivery end within a minute."""
SWEEP_INTERVAL = 2
"""Seconds between the reconciler's sweeps."""
MAX_QUEUE = 5000
"""Far above what the clients keep waiting: a 429 would be the service's mistake, not load."""
MAX_BATCH = 16
"""Images per task and forward pass; a model process killed mid-pass costs at most this many passes again."""
WEBHOOK_TIMEOUT = 2
"""Seconds a callback request may take (the receiver answers at once): short, so that a delivery's lease is too."""
WEBHOOK_SECRET = "chaos-campaign-webhook-secret-2026"
"""Signs every callback; the receiver verifies with it."""
API_KEYS = ("chaos-key-alpha", "chaos-key-bravo", "chaos-key-charlie")
"""One per client: three owners, so that fair share has keys to take turns between."""

CLOCK_SKEW_ENV = "PNEURADNET_CHAOS_CLOCK_SKEW"
"""The environment variable the skewed processes' sitecustomize.py reads its offset from."""
SKEWED_WORKER = 1
"""The worker whose clock runs off by CLOCK_SKEW[0]."""
SKEWED_API = 1
"""The API whose clock runs off by CLOCK_SKEW[1]."""
CLOCK_SKEW = (40.0, -25.0)
"""Seconds added to time.time() of SKEWED_WORKER and SKEWED_API: the worker ahead, the API behind. Both stay well
inside verify_webhook's 300 s tolerance."""

SITECUSTOMIZE = f'''"""Written by bench/chaos.py: this process's time.time() and time.time_ns() run
${CLOCK_SKEW_ENV} seconds off. C-level clocks (datetime.now, Redis' TIME, monotonic clocks) are not touched."""
import os
import time

_offset = float(os.environ.get("{CLOCK_SKEW_ENV}", "0"))
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _offset
time.time_ns = lambda: _time_ns() + int(_offset * 1_000_000_000)
'''

# --- what the service promises, as the README states it (restated, not imported: the campaign tests the promise) ---

LEASE_SECONDS = JOB_TIMEOUT + 15
"""A claim's lease: JOB_TIMEOUT, the hard limit's margin (10 s) and 5 s."""
VISIBILITY_SECONDS = JOB_TIMEOUT + 30
"""The broker hands a task taken and never acknowledged to another worker this long after it was taken..."""
RESTORE_INTERVAL = 5
"""... looking for such tasks this often."""
ADMISSION_STALLED_AFTER = 30
"""A batch whose API died mid-admission is closed by the reconciler after this long without progress."""
STRANDED_AFTER = 5
"""A queued job or chunk without a message is dispatched again after this long."""
CALLBACK_LEASE_SECONDS = 3 * WEBHOOK_TIMEOUT + 15
"""A callback attempt whose worker died is taken over after this long..."""
RESEND_AFTER = 10
"""... and the reconciler sends the task for it this long after that."""
RETRY_COUNTDOWN_LIMIT = 25
"""Longest wait of a callback retry left to a countdown on the broker."""

# --- the clients ----------------------------------------------------------------------------------------------------

CLIENTS = len(API_KEYS)
"""Client threads, one per API key."""
OP_WEIGHTS = {"interactive": 35, "bulk": 20, "zip": 15, "idempotent-sequential": 15, "idempotent-concurrent": 15}
"""How often each kind of operation comes (relative weights)."""
INTERACTIVE_IMAGES = (1, 4)
"""Images of an interactive submission (INTERACTIVE_MAX_IMAGES is 4)."""
BULK_IMAGES = (10, 60)
"""Loose images of a bulk submission."""
ZIP_MEMBERS = (10, 80)
"""Images in a ZIP submission."""
IDEMPOTENT_BULK_SHARE = 0.5
"""Share of idempotent repeats that send a bulk batch rather than an interactive one."""
CALLBACK_SHARE = 0.3
"""Share of operations that ask for a callback."""
MAX_TRIES = 5
"""Tries of one request, the first included, when it is answered 409, 429 or 503, or gets no answer."""
FIRST_BACKOFF = 1.0
"""Seconds before retrying a request that got no answer (doubled at each try)..."""
MAX_BACKOFF = 8.0
"""... up to this."""
HTTP_TIMEOUT = 60.0
"""Seconds one request may take to send or answer."""
FOLLOW_SECONDS = 20.0
"""A client follows its batches (long-polling) at most this long before its next operation: closed loop, so that
the queue holds what the workers can do, not what the clients could send."""
FOLLOW_WAIT = 5
"""Seconds of each long-poll (short, so that a client notices the end of the run)."""
THINK_SECONDS = (0.0, 1.5)
"""A client's pause between operations."""
RETRIED_STATUSES = frozenset({409, 429, 503})
"""Answers that say "not now": an Idempotency-Key still being admitted, a full queue, a store or broker away."""

# --- the nemesis and the receiver -----------------------------------------------------------------------------------

FAULT_WEIGHTS = {"kill-worker": 25, "kill-api": 15, "restart-redis": 15, "client-kill": 15, "slow-redis": 15,
                 "broker-send-fails": 15}
"""How often each fault comes (relative weights)."""
MEAN_FAULT_GAP = 4.0
"""Mean seconds between two faults (exponentially distributed)..."""
MAX_FAULT_GAP = 15.0
"""... cut at this."""
RESTART_AFTER = (1.0, 5.0)
"""Seconds a killed process stays down."""
REDIS_DOWN_SECONDS = (0.0, 3.0)
"""How long Redis stays stopped when it restarts."""
SLEEP_SECONDS = (0.5, 3.0)
"""Length of a DEBUG SLEEP."""
SEND_FAILS_SECONDS = (1.0, 5.0)
"""How long the broker refuses tasks."""
BROKER_SEND_FAILS = "broker-send-fails"
"""The fault file's word for it (service/faults.py)."""
RECEIVER_UNAVAILABLE_SHARE = 0.25
"""Share of callback requests the receiver answers 503 during the run (never while healing), to force retries."""

# --- the campaign ---------------------------------------------------------------------------------------------------

PROGRESS_EVERY = 10.0
"""Seconds between progress lines."""
SLOWEST_RATE = 5.0
"""Images a second the fleet finishes at the least while healing, to bound the time of a backlog."""
HEAL_MARGIN = 30.0
"""Seconds added to the heal bound for a busy machine."""
CHECK_SECONDS = 120.0
"""Most seconds the checker takes to read Redis, the API and the logs, and to judge."""
RESULT_TOLERANCE = 1e-5
"""Largest difference allowed between a probability from the service and from this process."""
RADIOGRAPH_COUNT = 16
"""Radiographs the model package ships; every upload is made of them."""
MODEL_PACKAGE = "pneumonia-model-package"
"""The installed package that ships the default model and its 16 real validation radiographs."""
RADIOGRAPHS_IN_PACKAGE = "pneumonia_model_package/datasets/pneumonia-data/val"
"""Where the radiographs are in it (located with importlib.metadata, as tests/conftest.py does)."""
SOURCE_IN_NAME = re.compile(r"src(\d+)\.jpeg$")
"""Every uploaded file is named for the radiograph it is (`...-src07.jpeg`): the checker finds it by the name."""


def heal_bound(unfinished: int) -> float:
    """Seconds the fleet may take, once the faults stop and every process runs, to finish everything: the slowest
    path back for a job (the broker's redelivery after the visibility timeout, or a cut-short admission closed),
    then its batch's callback taken over after its lease and sent again, the sweeps between, the backlog of
    `unfinished` jobs at SLOWEST_RATE, and a margin."""
    job_back = max(VISIBILITY_SECONDS + RESTORE_INTERVAL, ADMISSION_STALLED_AFTER + SWEEP_INTERVAL,
                   LEASE_SECONDS + STRANDED_AFTER)
    callback_back = CALLBACK_LEASE_SECONDS + RESEND_AFTER + RETRY_COUNTDOWN_LIMIT
    return job_back + callback_back + 5 * SWEEP_INTERVAL + unfinished / SLOWEST_RATE + HEAL_MARGIN


def time_limit(minutes: float) -> float:
    """The longest a whole campaign may take (for a caller that runs it as a process): start, run, processes started
    again after the faults, heal with the largest backlog the clients can leave, and the checker."""
    backlog = CLIENTS * 2 * max(BULK_IMAGES[1], ZIP_MEMBERS[1])
    return 2 * STARTUP_TIMEOUT + minutes * 60 + FOLLOW_SECONDS + HTTP_TIMEOUT + heal_bound(backlog) + CHECK_SECONDS


def seeded(*parts: object) -> random.Random:
    """An RNG of its own for one decision-maker (a client's operation, a fault, a callback answer): what it decides
    does not depend on how many decisions others made before it, so a replay decides the same."""
    return random.Random(":".join(map(str, parts)))


# --- the history ----------------------------------------------------------------------------------------------------

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


# --- the images -----------------------------------------------------------------------------------------------------

def radiographs() -> list[bytes]:
    """The 16 real radiographs of the installed model package, sorted by name (located, never copied)."""
    folder = Path(str(importlib.metadata.distribution(MODEL_PACKAGE).locate_file(RADIOGRAPHS_IN_PACKAGE)))
    images = [path.read_bytes() for path in sorted(folder.glob("*.jpeg"))]
    if len(images) != RADIOGRAPH_COUNT:
        raise RuntimeError(f"{folder} holds {len(images)} radiographs, not {RADIOGRAPH_COUNT}: is {MODEL_PACKAGE} "
                           "installed whole?")
    return images


def reference_results(images: list[bytes]) -> list[list[float]]:
    """Each radiograph's probabilities classified in this process as the workers do (the default model on
    onnxruntime, one thread): what every succeeded job of it must say."""
    from pneuradnet.classifier import Classifier
    from pneuradnet.manifest import MODEL_CACHE_DIR

    classifier = Classifier.load("default", runtime="onnxruntime", threads=1, max_batch=MAX_BATCH,
                                 cache_dir=MODEL_CACHE_DIR)
    outcomes = classifier.classify([(f"src{n:02d}.jpeg", data) for n, data in enumerate(images)])
    bad = [str(outcome) for outcome in outcomes if isinstance(outcome, Exception)]
    if bad:
        raise RuntimeError(f"the model package's radiographs do not classify here: {bad}")
    return [list(outcome.predictions) for outcome in outcomes if not isinstance(outcome, Exception)]


def loose_files(op: str, sources: list[int], images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"op{op}-n{n:03d}-src{source:02d}.jpeg", images[source], "image/jpeg"))
            for n, source in enumerate(sources)]


def zip_file(op: str, sources: list[int], images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as members:
        for n, source in enumerate(sources):
            members.writestr(f"study-{op}/img{n:03d}-src{source:02d}.jpeg", images[source])
    return [("files", (f"op{op}.zip", archive.getvalue(), "application/zip"))]


# --- the fleet ------------------------------------------------------------------------------------------------------

class RedisServer:
    """A redis-server with an append-only file in `folder`, restarted on the same file by the nemesis."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--appendonly", "yes",
             "--appendfsync", "everysec", "--save", "", "--dir", str(self.folder), "--enable-debug-command", "local",
             "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self.answers, timeout=30, what="redis-server to start")

    def restart(self, down_for: float) -> float:
        """SHUTDOWN (the append-only file gets what it lacked), wait `down_for` seconds, start again on the same file;
        seconds it did not answer."""
        started = time.monotonic()
        with self._once(timeout=30) as client:
            client.shutdown()
        if self.process is not None:
            self.process.wait(timeout=60)
        time.sleep(down_for)
        self.start()
        return time.monotonic() - started

    def answers(self) -> bool:
        try:
            with self._once(timeout=1) as client:
                return bool(client.ping())
        except RedisError:
            return False

    def _once(self, *, timeout: float) -> Redis:
        """A client that sends each command once: redis-py's retries (with backoff) would hide for seconds that the
        server has stopped."""
        return Redis(port=self.port, socket_timeout=timeout, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))

    def client(self, *, timeout: float = 10.0) -> Redis:
        return Redis(port=self.port, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Slot:
    """One API or worker of the fleet: its current process, if any."""

    index: int
    env: dict[str, str]
    process: subprocess.Popen | None = None
    down: bool = True
    """Not started yet, killed, or being started again: the nemesis leaves it alone."""


class Fleet:
    """The service's processes: Redis, APIS APIs on ports of their own, WORKERS workers, one log per process run."""

    def __init__(self, folder: Path, *, receiver_port: int, clock: Callable[[], float]) -> None:
        self.folder = folder
        self.clock = clock
        self.redis = RedisServer(folder)
        self.fault_file = folder / "faults"
        self.fault_file.write_text("")
        env = service_env(self.redis.url, receiver_port, self.fault_file)
        skew_dir = folder / "skewed-clock"
        skew_dir.mkdir(exist_ok=True)
        (skew_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.api_ports = [free_port() for _ in range(APIS)]
        self.apis = [Slot(n, skewed(env, skew_dir, CLOCK_SKEW[1]) if n == SKEWED_API else env) for n in range(APIS)]
        self.workers = [Slot(n, skewed(env, skew_dir, CLOCK_SKEW[0]) if n == SKEWED_WORKER else env)
                        for n in range(WORKERS)]
        self.incarnations: list[Incarnation] = []
        self._lock = threading.Lock()

    @property
    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.api_ports]

    def start(self) -> None:
        self.redis.start()
        starters = [threading.Thread(target=self.start_api, args=(n,)) for n in range(APIS)]
        starters += [threading.Thread(target=self.start_worker, args=(n,)) for n in range(WORKERS)]
        for starter in starters:
            starter.start()
        for starter in starters:
            starter.join()
        if any(slot.down for slot in (*self.apis, *self.workers)):
            raise RuntimeError(f"the fleet did not start: see the logs in {self.folder}")

    def start_worker(self, index: int) -> None:
        """Start worker `index` (a log of its own for this run) and return once its model process is ready."""
        slot = self.workers[index]
        with self._lock:
            number = sum(incarnation.worker == index for incarnation in self.incarnations) + 1
            incarnation = Incarnation(index, number, self.folder / f"worker-{index}-{number:02d}.log", self.clock())
            self.incarnations.append(incarnation)
        command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--loglevel", "INFO",
                   "--without-heartbeat", "--without-gossip", "--without-mingle", "-n", f"chaos-{index}@%h"]
        with incarnation.log.open("ab") as log:
            slot.process = subprocess.Popen(command, cwd=ROOT, env=slot.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        incarnation.pid = slot.process.pid
        process = slot.process
        wait_until(lambda: "loaded from" in incarnation.log.read_text() or process.poll() is not None,
                   timeout=STARTUP_TIMEOUT, what=f"worker {index} to load its model")
        if process.poll() is not None:
            raise RuntimeError(f"worker {index} exited with {process.returncode}: see {incarnation.log}")
        slot.down = False

    def start_api(self, index: int) -> None:
        slot = self.apis[index]
        log_path = self.folder / f"api-{index}.log"
        with log_path.open("ab") as log:
            slot.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port",
                 str(self.api_ports[index])],
                cwd=ROOT, env=slot.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_api(slot.process, self.api_urls[index], log_path)
        slot.down = False

    def kill_worker(self, index: int) -> Incarnation:
        """SIGKILL the worker's process group (parent and model process at once); the run it was."""
        slot = self.workers[index]
        slot.down = True
        _kill_group(slot.process)
        incarnation = next(i for i in reversed(self.incarnations) if i.worker == index)
        incarnation.killed_at = self.clock()
        return incarnation

    def kill_api(self, index: int) -> None:
        self.apis[index].down = True
        _kill_group(self.apis[index].process)

    def live(self, slots: list[Slot]) -> list[int]:
        return [slot.index for slot in slots if not slot.down]

    def ensure_up(self) -> None:
        """Start again whatever is not running, or never became ready (a process that died by itself, a restart
        that failed): once the nemesis has stopped, a slot still down is one of those."""
        if not self.redis.answers():
            self.redis.start()
        for slots, start in ((self.apis, self.start_api), (self.workers, self.start_worker)):
            for slot in slots:
                if slot.down or slot.process is None or slot.process.poll() is not None:
                    _kill_group(slot.process)
                    start(slot.index)

    def set_fault(self, text: str) -> None:
        self.fault_file.write_text(text)

    def close(self) -> None:
        """Stop everything at once: the campaign is over, nothing it runs has anything to keep."""
        for slot in (*self.workers, *self.apis):
            slot.down = True
            _kill_group(slot.process)
        self.redis.kill()


def service_env(redis_url: str, receiver_port: int, fault_file: Path) -> dict[str, str]:
    """The environment of every API and worker: this one's, without fault points, with the campaign's settings."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PNEURADNET_FAULT")}
    return env | {
        "REDIS_URL": redis_url, "JOB_TIMEOUT": str(JOB_TIMEOUT), "SWEEP_INTERVAL": str(SWEEP_INTERVAL),
        "MAX_QUEUE": str(MAX_QUEUE), "MAX_BATCH": str(MAX_BATCH), "API_KEYS": ",".join(API_KEYS),
        "WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{receiver_port}", "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "WEBHOOK_TIMEOUT": str(WEBHOOK_TIMEOUT), "WORKER_CONCURRENCY": "1", "WORKER_THREADS": "1",
        "INFERENCE_RUNTIME": "onnxruntime", "LOG_FORMAT": "json", "PNEURADNET_FAULT_FILE": str(fault_file),
        "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
    }


def skewed(env: dict[str, str], skew_dir: Path, seconds: float) -> dict[str, str]:
    """The environment of a process whose time.time() runs `seconds` off (the sitecustomize.py in `skew_dir`)."""
    path = os.pathsep.join(part for part in (str(skew_dir), env.get("PYTHONPATH", "")) if part)
    return env | {"PYTHONPATH": path, CLOCK_SKEW_ENV: str(seconds)}


def _kill_group(process: subprocess.Popen | None) -> None:
    """SIGKILL a process started in a session of its own, and everything in its group."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# --- the callback receiver ------------------------------------------------------------------------------------------

class Receiver:
    """An HTTP server on 127.0.0.1 that verifies every callback's signature, answers 200 (or, during the run and as
    the seed decides, 503), and records every request."""

    def __init__(self, seed: int, clock: Callable[[], float]) -> None:
        self.seed = seed
        self.clock = clock
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/chaos"
        self.received: list[Received] = []
        self.healing = False
        """Set when the faults stop: every request is answered 200 from then on."""
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name="receiver", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, delivery_id: str) -> int:
        with self._lock:
            self._seen[delivery_id] += 1
            nth = self._seen[delivery_id]
        unavailable = seeded(self.seed, "receiver", delivery_id, nth).random() < RECEIVER_UNAVAILABLE_SHARE
        return 503 if unavailable and not self.healing else 200

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                at = receiver.clock()
                try:
                    payload = verify_webhook(WEBHOOK_SECRET, dict(self.headers), body)
                    signed, status = True, receiver._answer(str(payload.get("delivery_id")))
                except WebhookSignatureError:
                    payload, signed, status = {}, False, 400
                answered = True
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                    self.wfile.flush()
                except OSError:
                    answered = False
                record = Received(str(payload.get("delivery_id", "")), str(payload.get("batch_id", "")),
                                  dict(payload.get("counts", {})), status, answered, signed, at)
                with receiver._lock:
                    receiver.received.append(record)

            def log_message(self, *_: object) -> None:
                pass

        return Handler


# --- the clients ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What one client operation sends, decided by its own RNG."""

    op: str
    kind: str
    sources: list[int]
    zipped: bool
    callback: bool
    idempotency_key: str | None
    sendings: int
    """1, or 2 for an idempotent repeat."""
    concurrent: bool
    think: float


def plan_op(seed: int, client: int, number: int) -> Plan:
    """Operation `number` of client `client`: the same for a seed whatever happened before it."""
    rng = seeded(seed, "client", client, "op", number)
    kind = rng.choices(list(OP_WEIGHTS), weights=list(OP_WEIGHTS.values()))[0]
    idempotent = kind.startswith("idempotent")
    if kind == "interactive" or (idempotent and rng.random() >= IDEMPOTENT_BULK_SHARE):
        count = rng.randint(*INTERACTIVE_IMAGES)
    elif kind == "zip":
        count = rng.randint(*ZIP_MEMBERS)
    else:
        count = rng.randint(*BULK_IMAGES)
    op = f"{client}.{number}"
    return Plan(op=op, kind=kind, sources=[rng.randrange(RADIOGRAPH_COUNT) for _ in range(count)], zipped=kind == "zip",
                callback=rng.random() < CALLBACK_SHARE, idempotency_key=f"chaos-{seed}-{op}" if idempotent else None,
                sendings=2 if idempotent else 1, concurrent=kind == "idempotent-concurrent",
                think=rng.uniform(*THINK_SECONDS))


class Client(threading.Thread):
    """One API key's client: operations one after the other, each followed until its batches finish (or for
    FOLLOW_SECONDS), every request recorded in the history."""

    def __init__(self, campaign: "Campaign", index: int) -> None:
        super().__init__(name=f"client-{index}", daemon=True)
        self.campaign = campaign
        self.index = index
        self.operations = 0

    def run(self) -> None:
        for number in itertools.count(1):
            if self.campaign.stopping.is_set():
                return
            plan = plan_op(self.campaign.seed, self.index, number)
            self.perform(plan)
            self.operations += 1
            self.campaign.stopping.wait(plan.think)

    def perform(self, plan: Plan) -> None:
        files = (zip_file if plan.zipped else loose_files)(plan.op, plan.sources, self.campaign.images)
        if plan.concurrent:
            answers: list[dict | None] = [None, None]

            def send(repeat: int) -> None:
                answers[repeat] = self.submit(plan, files, repeat)

            senders = [threading.Thread(target=send, args=(repeat,)) for repeat in range(plan.sendings)]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
        else:
            answers = [self.submit(plan, files, repeat) for repeat in range(plan.sendings)]
        batches = list(dict.fromkeys(answer["batch_id"] for answer in answers if answer))
        self.follow(plan, batches)

    def submit(self, plan: Plan, files: list, repeat: int) -> dict | None:
        """POST /jobs until it is answered for good; the 202's body, or None."""
        headers = {"Authorization": f"Bearer {API_KEYS[self.index]}"}
        if plan.idempotency_key:
            headers["Idempotency-Key"] = plan.idempotency_key
        params = {"callback_url": f"{self.campaign.receiver.url}?op={plan.op}"} if plan.callback else {}
        with httpx.Client(timeout=HTTP_TIMEOUT) as http:
            for attempt in range(1, MAX_TRIES + 1):
                rng = seeded(self.campaign.seed, "client", plan.op, "repeat", repeat, "attempt", attempt)
                api = rng.randrange(APIS)
                call = Call(op=plan.op, kind=plan.kind, method="POST", path="/jobs", api=api, key=self.index,
                            repeat=repeat, attempt=attempt, idempotency_key=plan.idempotency_key,
                            sources=plan.sources, callback=plan.callback)
                url = f"{self.campaign.fleet.api_urls[api]}/jobs"
                response = self.campaign.exchange(call, partial(http.post, url, files=files, headers=headers,
                                                                params=params))
                if response is not None and response.status_code == 202:
                    return response.json()
                if response is not None and response.status_code not in RETRIED_STATUSES:
                    return None
                if attempt == MAX_TRIES or self.campaign.stopping.wait(pause(response, attempt)):
                    return None
        return None

    def follow(self, plan: Plan, batches: list[str]) -> None:
        """Long-poll each batch until it has finished, the follow time is over, or the run is."""
        deadline = time.monotonic() + FOLLOW_SECONDS
        headers = {"Authorization": f"Bearer {API_KEYS[self.index]}"}
        with httpx.Client(timeout=HTTP_TIMEOUT + FOLLOW_WAIT) as http:
            for batch_id in batches:
                for attempt in itertools.count(1):
                    if self.campaign.stopping.is_set() or time.monotonic() > deadline:
                        return
                    api = seeded(self.campaign.seed, "poll", plan.op, batch_id, attempt).randrange(APIS)
                    call = Call(op=plan.op, kind="poll", method="GET", path=f"/batches/{batch_id}", api=api,
                                key=self.index, attempt=attempt)
                    url = f"{self.campaign.fleet.api_urls[api]}/batches/{batch_id}"
                    response = self.campaign.exchange(call, partial(
                        http.get, url, headers=headers, params={"wait": FOLLOW_WAIT, "page_size": 1000}))
                    if response is not None and response.status_code == 200 and batch_done(response.json()):
                        break
                    if response is None or response.status_code != 200:
                        self.campaign.stopping.wait(pause(response, attempt))


def batch_done(body: dict) -> bool:
    """Whether a GET /batches/{id} answer says every job has finished."""
    counts = body.get("counts", {})
    return sum(counts.get(status, 0) for status in ("succeeded", "failed", "canceled")) >= body.get("total", 0)


def pause(response: httpx.Response | None, attempt: int) -> float:
    """Seconds before the next try: the answer's Retry-After, else a backoff."""
    retry_after = response.headers.get("retry-after", "") if response is not None else ""
    return float(retry_after) if retry_after.isdigit() else min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (attempt - 1))


def kept_body(call: Call, response: httpx.Response) -> Any:
    """What the history keeps of an answer: enough for the checker, not the results."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if not isinstance(body, dict):
        return None
    if response.status_code == 202:
        return {"batch_id": body.get("batch_id"), "lane": body.get("lane"),
                "jobs": [{"id": job["id"], "filename": job["filename"]} for job in body.get("jobs", [])]}
    if response.status_code >= 400:
        return {"type": body.get("type"), "detail": body.get("detail")}
    if call.kind == "poll":
        return {"total": body.get("total"), "counts": body.get("counts")}
    return None


# --- the nemesis ----------------------------------------------------------------------------------------------------

class Nemesis(threading.Thread):
    """Injects one fault at a time at random moments (seeded); processes it kills are started again in threads of
    their own, so that faults overlap. It never takes down the last API or worker up."""

    def __init__(self, campaign: "Campaign") -> None:
        super().__init__(name="nemesis", daemon=True)
        self.campaign = campaign
        self.fleet = campaign.fleet
        self.faults: list[Fault] = []
        self.skipped: Counter[str] = Counter()
        self._helpers: list[threading.Thread] = []
        self._send_fails_until = 0.0
        self._lock = threading.Lock()

    def run(self) -> None:
        inject: dict[str, Callable[[random.Random, Fault], bool]] = {
            "kill-worker": self._kill_worker, "kill-api": self._kill_api, "restart-redis": self._restart_redis,
            "client-kill": self._client_kill, "slow-redis": self._slow_redis,
            "broker-send-fails": self._broker_send_fails}
        for number in itertools.count(1):
            rng = seeded(self.campaign.seed, "nemesis", number)
            if self.campaign.stopping.wait(min(rng.expovariate(1 / MEAN_FAULT_GAP), MAX_FAULT_GAP)):
                return
            kind = rng.choices(list(FAULT_WEIGHTS), weights=list(FAULT_WEIGHTS.values()))[0]
            fault = Fault(number, kind, "", self.campaign.clock(), time.time())
            try:
                injected = inject[kind](rng, fault)
            except Exception as error:  # a fault that could not be injected (Redis away): said, not fatal
                fault.detail = f"not injected: {type(error).__name__}: {error}"
                injected = False
            if injected:
                with self._lock:
                    self.faults.append(fault)
                self.campaign.say(f"fault {number}: {kind} {fault.target} {fault.detail}".rstrip())
            else:
                self.skipped[kind] += 1

    def join_all(self) -> None:
        """Once the run is stopping: wait until every process killed is back and every slow command or refusal is
        over."""
        self.join()
        for helper in list(self._helpers):
            helper.join()

    def _later(self, target: Callable[[], None]) -> None:
        helper = threading.Thread(target=target, daemon=True)
        self._helpers.append(helper)
        helper.start()

    def _kill_worker(self, rng: random.Random, fault: Fault) -> bool:
        live = self.fleet.live(self.fleet.workers)
        if len(live) < WORKERS:
            return False
        index = live[rng.randrange(len(live))]
        down_for = rng.uniform(*RESTART_AFTER)
        incarnation = self.fleet.kill_worker(index)
        fault.target = f"worker-{index}"
        fault.detail = f"(run {incarnation.number}, pid {incarnation.pid}), back in {down_for:.1f} s"
        self._later(lambda: self._restart(fault, down_for, lambda: self.fleet.start_worker(index)))
        return True

    def _kill_api(self, rng: random.Random, fault: Fault) -> bool:
        live = self.fleet.live(self.fleet.apis)
        if len(live) < APIS:
            return False
        index = live[rng.randrange(len(live))]
        down_for = rng.uniform(*RESTART_AFTER)
        self.fleet.kill_api(index)
        fault.target = f"api-{index}"
        fault.detail = f"back in {down_for:.1f} s"
        self._later(lambda: self._restart(fault, down_for, lambda: self.fleet.start_api(index)))
        return True

    def _restart(self, fault: Fault, down_for: float, start: Callable[[], None]) -> None:
        time.sleep(down_for)
        try:
            start()
        except Exception as error:  # the heal starts it again; the checker will see what it cost
            self.campaign.say(f"fault {fault.number}: {fault.target} did not start again: {error}")
            return
        fault.seconds = self.campaign.clock() - fault.at

    def _restart_redis(self, rng: random.Random, fault: Fault) -> bool:
        fault.target = "redis"
        fault.seconds = self.fleet.redis.restart(rng.uniform(*REDIS_DOWN_SECONDS))
        fault.detail = f"answered again after {fault.seconds:.1f} s"
        return True

    def _client_kill(self, _: random.Random, fault: Fault) -> bool:
        with self.fleet.redis.client() as redis:
            killed = redis.execute_command("CLIENT", "KILL", "TYPE", "normal")
        fault.target = "redis"
        fault.detail = f"{killed} connections dropped"
        return True

    def _slow_redis(self, rng: random.Random, fault: Fault) -> bool:
        seconds = round(rng.uniform(*SLEEP_SECONDS), 2)
        fault.target, fault.seconds, fault.detail = "redis", seconds, f"DEBUG SLEEP {seconds} s"

        def sleep() -> None:
            try:
                with self.fleet.redis.client(timeout=seconds + 30) as redis:
                    redis.execute_command("DEBUG", "SLEEP", seconds)
            except RedisError as error:
                self.campaign.say(f"fault {fault.number}: DEBUG SLEEP failed: {error}")

        self._later(sleep)
        return True

    def _broker_send_fails(self, rng: random.Random, fault: Fault) -> bool:
        seconds = rng.uniform(*SEND_FAILS_SECONDS)
        fault.target, fault.seconds, fault.detail = "broker", seconds, f"for {seconds:.1f} s"
        with self._lock:
            self._send_fails_until = max(self._send_fails_until, time.monotonic() + seconds)
            self.fleet.set_fault(BROKER_SEND_FAILS + "\n")

        def clear() -> None:
            time.sleep(seconds)
            with self._lock:
                if time.monotonic() >= self._send_fails_until:  # a later refusal still going on keeps the file
                    self.fleet.set_fault("")

        self._later(clear)
        return True


# --- the campaign ---------------------------------------------------------------------------------------------------

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

    def report(self, heal: dict[str, Any], evidence: "Evidence", verdicts: list["Verdict"]) -> dict[str, Any]:
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


def worst_recovery(faults: list[Fault], evidence: "Evidence") -> dict[str, float]:
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


# --- the checker: reads the history, the logs, Redis (by literal key names) and the API -------------------------------
# Nothing below imports the service's code: what a key holds is read as the README and service/keys.py document it.

PREFIX = "pneuradnet:"
"""Every key of the job store begins so (service/keys.py)."""
FINISHED = frozenset({"succeeded", "failed", "canceled"})
"""The terminal statuses: a job in one never moves again."""
STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
"""Every status a job may have, each counted in its batch's record."""
BOOKS = {
    "admissions (MAX_QUEUE reservations)": ("hlen", f"{PREFIX}admissions"),
    "running registry": ("zcard", f"{PREFIX}registry:running"),
    "bulk queued registry": ("zcard", f"{PREFIX}registry:queued"),
    "interactive queued registry": ("zcard", f"{PREFIX}registry:queued:interactive"),
    "callbacks due": ("zcard", f"{PREFIX}webhooks:due"),
    "fair-share keys with work": ("scard", f"{PREFIX}fair:owners"),
    "broker: bulk queue": ("llen", "pneuradnet"),
    "broker: interactive queue": ("llen", "pneuradnet.interactive"),
    "broker: callbacks queue": ("llen", "pneuradnet.webhooks"),
    "broker: unacknowledged": ("hlen", "unacked"),
}
"""Every book that must be empty at rest: its command for the number of entries, and its key."""
FAIR_BOOKS = {"fair-share in flight": f"{PREFIX}fair:in-flight:*", "fair-share pending": f"{PREFIX}fair:pending:*",
              "fair-share chunks": f"{PREFIX}fair:chunks:*"}
"""The per-key fair-share books, by pattern: every key's must be empty at rest."""
ALLOWED_4XX = {409: "idempotency-in-progress", 429: "queue-full"}
"""The refusals a client is told to retry; any other 4xx to these clients' well-formed requests is a fault."""
DEATH = re.compile(r"pid:(\d+) exited with 'signal|model process \S+:(\d+) died under a task"
                   r"|Task \S+\[([^\]]+)\] cannot be acknowledged after a connection loss")
"""A worker log's line saying that a model process died: billiard's word for a child killed by a signal, the
service's for one its parent saw die under a task, or Celery's when it SIGTERMs the child running a task whose
broker connection was lost (billiard then says nothing: the termination is its own). Its group names the pid, or
the task."""


def accepted_jobs(calls: Iterable[Call]) -> list[str]:
    """Every job id some 202 answer named, in order, once."""
    return list(dict.fromkeys(job["id"] for call in calls if call.status == 202 for job in call.body["jobs"]))


def job_statuses(redis: Redis, job_ids: list[str]) -> list[str | None]:
    """Each job's status now (None for a job with no record), in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(f"{PREFIX}job:{job_id}", "status")
    return pipe.execute()


def read_books(redis: Redis) -> dict[str, int]:
    """How many entries each book holds now."""
    pipe = redis.pipeline(transaction=False)
    for command, key in BOOKS.values():
        getattr(pipe, command)(key)
    books = dict(zip(BOOKS, pipe.execute(), strict=True))
    for name, pattern in FAIR_BOOKS.items():
        books[name] = sum(_size(redis, key) for key in redis.scan_iter(pattern, count=1000))
    return books


def _size(redis: Redis, key: str) -> int:
    """Entries of a key of any type (0 for one that is gone, 1 for a string)."""
    sizes: dict[str, Callable[[str], int]] = {"list": redis.llen, "zset": redis.zcard, "hash": redis.hlen,
                                              "set": redis.scard, "none": lambda _: 0}
    return sizes.get(redis.type(key), lambda _: 1)(key)


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


def accepted_batches(calls: Iterable[Call]) -> dict[str, Call]:
    """Every batch some 202 answer named, with the first such answer."""
    batches: dict[str, Call] = {}
    for call in calls:
        if call.status == 202:
            batches.setdefault(call.body["batch_id"], call)
    return batches


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


# --- the command ----------------------------------------------------------------------------------------------------

def print_verdicts(report: dict[str, Any]) -> None:
    """The campaign in one line, then each invariant's verdict with its figures, what broke it and what excused."""
    figures, heal = report["figures"], report["heal"]
    print(f"\nseed {report['seed']}: {figures['operations']} operations, {figures['requests']} requests, "
          f"{figures['accepted_jobs']} jobs accepted in {figures['accepted_batches']} batches; "
          f"{figures['forward_pass_images_logged']} images forward-passed; faults {report['faults']['counts']}; "
          f"heal {heal['heal_seconds']} s (bound {heal['heal_bound_seconds']} s)")
    print(f"worst recovery per fault kind (s): {report['faults']['worst_recovery_seconds']}")
    for verdict in report["verdicts"]:
        print(f"[{'holds' if verdict['holds'] else 'VIOLATED'}] {verdict['invariant']}: "
              f"{json.dumps(verdict['figures'])}")
        for line in verdict["offending"][:20]:
            print(f"    offending: {line}")
        if len(verdict["offending"]) > 20:
            print(f"    ... and {len(verdict['offending']) - 20} more (see the report)")
        for line in verdict["notes"][:10]:
            print(f"    note: {line}")
    print(f"\n{'every invariant holds' if report['holds'] else 'SOME INVARIANT IS VIOLATED'} (seed {report['seed']}; "
          f"replay: {report['replay']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0, help="how long the clients and the nemesis run")
    parser.add_argument("--seed", type=int, default=None, help="replay a campaign (default: a random seed)")
    parser.add_argument("--report", type=Path, default=None, help="write the report and history as JSON here")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for Redis' files and the logs")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**9)
    print(f"seed {seed}", flush=True)
    # `kill PID` stops the campaign as Ctrl-C does: through the `finally` below, which stops every process started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="pneuradnet-chaos-"))
    folder.mkdir(parents=True, exist_ok=True)
    campaign = Campaign(seed, args.minutes, folder)
    try:
        report = campaign.run()
    except KeyboardInterrupt:
        print(f"interrupted (seed {seed}): stopping every process the campaign started", flush=True)
        return 130
    finally:
        campaign.close()
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1, default=str))
    print_verdicts(report)
    return 0 if report["holds"] else 1


if __name__ == "__main__":
    sys.exit(main())
