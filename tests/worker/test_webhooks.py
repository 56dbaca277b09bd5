"""Batch callbacks end to end, with real processes: an API, worker processes and a Redis of the test's own, and a
real HTTP receiver on 127.0.0.1 that records what it gets and answers what the test tells it.

Delivered signed; retried after a 503 and after a refused connection, with the same delivery id; never retried
after a 400; one delivery per batch when two workers finish a batch's last two jobs at the same moment; and again,
with the same delivery id, after the worker delivering it is SIGKILLed mid-request.
"""

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from redis import Redis

from pneuradnet.client import verify_webhook
from service.broker import UNACKED
from service.notice import DISCLAIMER
from service.queue import WEBHOOK_QUEUE
from tests.live_service import start_api, start_worker
from tests.processes import free_port, stop, wait_until

pytestmark = pytest.mark.model

SECRET = "live-test-webhook-secret-0123"
SETTINGS = {"JOB_TIMEOUT": "5", "SWEEP_INTERVAL": "1", "MAX_BATCH": "1", "BATCH_WAIT_MS": "0",
            "WORKER_THREADS": "1", "WEBHOOK_SECRET": SECRET, "WEBHOOK_TIMEOUT": "2"}


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes


class Receiver:
    """An HTTP server on 127.0.0.1:`port`, started and stopped by the test: it records every POST and answers the
    statuses queued in `answers` (then 200); `hold_next()` makes it keep the next request open, unanswered."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hooks/batch-done"
        self.requests: list[Received] = []
        self.answers: list[int] = []
        self.answered_ok = 0
        self._hold = False
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.requests.append(Received(dict(self.headers), body))
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    hold, receiver._hold = receiver._hold, False
                if hold:
                    receiver._released.wait()
                    return  # closed unanswered
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                if 200 <= status < 300:
                    with receiver._lock:
                        receiver.answered_ok += 1

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._released = threading.Event()

    def reset(self, answers: list[int] | None = None) -> None:
        with self._lock:
            self.requests, self.answers, self.answered_ok = [], list(answers or []), 0

    def hold_next(self) -> None:
        self._hold = True

    def of_batch(self, batch_id: str) -> list[Received]:
        return [request for request in list(self.requests) if f'"batch_id":"{batch_id}"'.encode() in request.body]


@dataclass
class Service:
    url: str
    redis_url: str
    receiver: Receiver
    workers: list[subprocess.Popen]
    logs: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A redis-server of its own, an API and two workers allowed to call the receiver (which is not started)."""
    logs = tmp_path_factory.mktemp("webhooks")
    port = free_port()
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                    "--appendonly", "no", "--dir", str(logs)], check=True, stdout=subprocess.DEVNULL)
    redis_url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: _answers(port), timeout=10, what="redis-server to start")
    receiver = Receiver(free_port())
    env = {"REDIS_URL": redis_url, "WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{receiver.port}", **SETTINGS}
    workers = [start_worker(logs / f"worker-{n}.log", **env) for n in range(2)]
    api, url = start_api(logs / "api.log", **env)
    yield Service(url, redis_url, receiver, workers, logs)
    receiver.stop()
    for process in (api, *workers):
        stop(process)
    Redis(port=port).shutdown(nosave=True)


@pytest.fixture
def receiver(service: Service) -> Iterator[Receiver]:
    service.receiver.reset()
    service.receiver.start()
    yield service.receiver
    service.receiver.stop()


def _answers(port: int) -> bool:
    try:
        return bool(Redis(port=port, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


def submit(service: Service, radiographs: list[Path], count: int = 1) -> str:
    files = [("files", (f"r{n}.jpeg", radiographs[n % len(radiographs)].read_bytes())) for n in range(count)]
    answer = httpx.post(f"{service.url}/jobs", files=files, params={"callback_url": service.receiver.url},
                        timeout=60)
    assert answer.status_code == 202, answer.text
    return answer.json()["batch_id"]


def callback(service: Service, batch_id: str) -> dict:
    return httpx.get(f"{service.url}/batches/{batch_id}", params={"page_size": 1}, timeout=10).json()["callback"]


def settled(service: Service, batch_id: str, state: str, *, timeout: float) -> dict:
    wait_until(lambda: callback(service, batch_id)["state"] == state, timeout=timeout, interval=0.2,
               what=f"the callback of batch {batch_id} to be {state}: {callback(service, batch_id)}")
    return callback(service, batch_id)


def test_a_finished_batch_is_posted_once_signed_with_its_summary(service: Service, receiver: Receiver,
                                                                 radiographs: list[Path]):
    batch_id = submit(service, radiographs, 3)
    state = settled(service, batch_id, "delivered", timeout=60)
    (request,) = receiver.of_batch(batch_id)
    sent = verify_webhook(SECRET, request.headers, request.body)
    assert request.headers["X-Pneuradnet-Delivery"] == sent["delivery_id"] == state["delivery_id"]
    assert sent["counts"]["succeeded"] == sent["total"] == 3
    assert sent["batch_url"] == f"{service.url}/batches/{batch_id}"
    assert sent["csv_url"] == f"{service.url}/batches/{batch_id}?format=csv"
    assert sent["notice"] == DISCLAIMER and sent["finished_at"]
    assert len(request.body) < 2000  # a summary: no image, no result
    assert (state["attempts"], state["last_status"]) == (1, 200)
    with pytest.raises(Exception, match="does not match"):
        verify_webhook("another-secret-0123456789", request.headers, request.body)
    assert httpx.get(sent["csv_url"], timeout=10).text.count("\n") == 4  # the link works: header and 3 rows


def test_a_503_is_retried_with_the_same_delivery_id(service: Service, receiver: Receiver, radiographs: list[Path]):
    receiver.reset(answers=[503])
    batch_id = submit(service, radiographs)
    state = settled(service, batch_id, "delivered", timeout=60)
    first, second = receiver.of_batch(batch_id)
    assert first.headers["X-Pneuradnet-Delivery"] == second.headers["X-Pneuradnet-Delivery"] == state["delivery_id"]
    assert verify_webhook(SECRET, second.headers, second.body)["batch_id"] == batch_id
    assert (state["attempts"], state["last_status"]) == (2, 200)


def test_a_refused_connection_is_retried_until_the_receiver_listens(service: Service, radiographs: list[Path]):
    receiver = service.receiver
    receiver.reset()
    batch_id = submit(service, radiographs)  # nothing listens yet
    wait_until(lambda: callback(service, batch_id)["attempts"] >= 2, timeout=60, interval=0.2,
               what="two refused attempts")
    refused = callback(service, batch_id)
    assert refused["state"] in ("pending", "delivering") and refused["last_status"] is None
    receiver.start()
    try:
        state = settled(service, batch_id, "delivered", timeout=60)
    finally:
        receiver.stop()
    (request,) = receiver.of_batch(batch_id)
    assert request.headers["X-Pneuradnet-Delivery"] == state["delivery_id"]
    assert state["attempts"] >= 3 and state["last_status"] == 200


def test_a_400_is_not_retried(service: Service, receiver: Receiver, radiographs: list[Path]):
    receiver.reset(answers=[400])
    batch_id = submit(service, radiographs)
    state = settled(service, batch_id, "failed", timeout=60)
    assert (state["attempts"], state["last_status"]) == (1, 400) and "not retried" in state["last_error"]
    time.sleep(8)  # past the first retry's wait (2 s) and a sweep's resend (RESEND_AFTER after its moment)
    assert len(receiver.of_batch(batch_id)) == 1


def test_two_workers_finishing_a_batch_s_last_jobs_together_deliver_it_once(service: Service, receiver: Receiver,
                                                                            radiographs: list[Path]):
    # MAX_BATCH=1: each job is a task of its own, so the two jobs of a batch run on the two workers at once.
    batch_ids = [submit(service, radiographs, 2) for _ in range(20)]
    for batch_id in batch_ids:
        settled(service, batch_id, "delivered", timeout=120)
    time.sleep(3)  # room for a duplicate to arrive, if there were one
    assert [len(receiver.of_batch(batch_id)) for batch_id in batch_ids] == [1] * 20
    assert receiver.answered_ok == 20
    split = 0
    for batch_id in batch_ids:
        jobs = httpx.get(f"{service.url}/batches/{batch_id}", timeout=10).json()["jobs"]
        workers = Redis.from_url(service.redis_url, decode_responses=True)
        split += len({workers.hget(f"pneuradnet:job:{job['id']}", "worker") for job in jobs}) == 2
    assert split >= 5, f"only {split} of 20 batches had their two jobs on two workers: the race was not run"


def test_a_worker_killed_mid_delivery_is_taken_over_with_the_same_delivery_id(service: Service, receiver: Receiver,
                                                                              radiographs: list[Path]):
    receiver.hold_next()
    batch_id = submit(service, radiographs)
    wait_until(lambda: len(receiver.of_batch(batch_id)) == 1, timeout=60, interval=0.05,
               what="the delivery to reach the receiver")
    assert callback(service, batch_id)["state"] == "delivering"
    for worker in service.workers:  # whichever holds the request dies with it, mid-delivery
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    env = {"REDIS_URL": service.redis_url, "WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{receiver.port}", **SETTINGS}
    service.workers[:] = [start_worker(service.logs / "worker-after-kill.log", **env)]
    # The attempt's lease runs out, the reconciler sends the delivery again, the new worker makes attempt 2.
    state = settled(service, batch_id, "delivered", timeout=90)
    first, second = receiver.of_batch(batch_id)
    assert first.headers["X-Pneuradnet-Delivery"] == second.headers["X-Pneuradnet-Delivery"] == state["delivery_id"]
    assert (state["attempts"], state["last_status"]) == (2, 200)
    # The killed worker's task comes back from the broker (visibility timeout) and finds the delivery made.
    broker = Redis.from_url(service.redis_url)
    wait_until(lambda: not broker.hlen(UNACKED) and not broker.llen(WEBHOOK_QUEUE), timeout=60, interval=0.5,
               what="the killed worker's task to be handed out again and dropped")
    time.sleep(2)
    assert len(receiver.of_batch(batch_id)) == 2 and receiver.answered_ok == 1
