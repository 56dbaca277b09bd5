"""The callback receiver: an HTTP server the workers deliver callbacks to; it verifies each signature, answers
200 or (during the run, as the seed decides) 503, and records every request (`Received`)."""

import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.chaos.history import Received
from bench.chaos.settings import RECEIVER_UNAVAILABLE_SHARE, WEBHOOK_SECRET, seeded
from pneuradnet.client import verify_webhook
from pneuradnet.webhooks import WebhookSignatureError
from tests.processes import free_port


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
