"""The campaign's numbers, each with a line saying what it means: the fleet's settings, what the service promises
(restated), the clients', the nemesis' and the receiver's, and the campaign's; the time bounds they give
(heal_bound, time_limit); and `seeded`, the RNG of its own every decision-maker draws from."""

import random
import re

from tests.processes import STARTUP_TIMEOUT

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
