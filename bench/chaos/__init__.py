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
It (checker.py, with the books.py and history.py it reads through) imports nothing of api/, service/ or worker/,
so that it cannot share their bugs. The invariants:
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

The package, one job a module:
- settings.py: every number above (the fleet's settings, what the service promises, the clients', the nemesis' and
  the receiver's, the campaign's), each with a line saying what it means; heal_bound, time_limit and `seeded`;
- history.py: the records (`Call`, `Fault`, a worker run, a callback `Received`) and the jobs the history accepted;
- images.py: the radiographs, their reference results, the uploads made of them;
- fleet.py: Redis, the APIs and the workers as processes (start, kill, start again), their environment, the skew;
- receiver.py: the callback receiver;
- clients.py: the client threads and what they send;
- nemesis.py: the nemesis;
- campaign.py: the run, the heal, the evidence collected, the report;
- books.py: the job store read by its literal key names, and the books that must be empty at rest;
- checker.py: `Evidence`, the workers' logs read, `Checker` and its verdicts;
- __main__.py: the command.
"""
