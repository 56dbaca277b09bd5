"""Batch callbacks (webhooks), what the API and the workers share: which URLs may be called (the allow-list), what is
sent (the payload, signed), and what an answer means (delivered, retried later, or given up). The HTTP request
itself is the worker's (worker/webhooks.py); the delivery's state in Redis is service/deliveries.py's.

Allow-list patterns (WEBHOOK_ALLOWED_HOSTS, comma-separated; hosts compare case-insensitively, a trailing dot
ignored; internationalized names in their `xn--` form):

- `hooks.example.org`      that host, on its scheme's default port only (443 for https, 80 for http)
- `hooks.example.org:8443` that host on that port only; `hooks.example.org:*` on any port
- `*.example.org`          any name under example.org (`a.example.org`, `a.b.example.org`), not example.org itself;
                           a port may follow as above
- `127.0.0.1:8123`, `[::1]:8123`  an IP address, IPv6 in brackets; matched as written, never resolved

A port must be named to reach anything but the default one, so an allowed host's other services (a database, an
admin port) stay out of reach. Names are matched as the URL gives them: whoever controls an allowed name's DNS
decides where it points, so list only names you control.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx

from pneuradnet.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, signature_header

SCHEMES = {"http": 80, "https": 443}
"""The schemes a callback may use, with their default ports."""

MAX_URL_LENGTH = 2048
"""Longest callback_url accepted."""

USER_AGENT = "pneuradnet-webhooks/1"


class CallbackRefused(ValueError):
    """A callback URL the service will not call; the message says why, for the client."""


@dataclass(frozen=True)
class HostPattern:
    """One entry of WEBHOOK_ALLOWED_HOSTS: a host (or `*.` and a domain) and a port (None: the scheme's default;
    0: any)."""

    host: str
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> "HostPattern":
        """`host`, `host:port`, `host:*`, `*.domain[:port]`, `[v6 address][:port]`; ValueError if malformed."""
        entry = text.strip().lower()
        host, port = entry, None
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise ValueError(f"WEBHOOK_ALLOWED_HOSTS: {text!r} is not [address]:port")
            port = rest[1:] if rest else None
        elif entry.count(":") == 1:
            host, port = entry.split(":")
        host = host.rstrip(".")
        labels = host.removeprefix("*.").split(".")
        if not host or not all(labels) or any(char in host.removeprefix("*.") for char in "*/@?#[] "):
            raise ValueError(f"WEBHOOK_ALLOWED_HOSTS: {text!r} is not a host pattern (host, *.domain, host:port)")
        if host.startswith("*.") and len(labels) < 2:
            raise ValueError(f"WEBHOOK_ALLOWED_HOSTS: {text!r} is too wide: name a domain of two labels at least")
        if port is None:
            return cls(host)
        if port == "*":
            return cls(host, 0)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"WEBHOOK_ALLOWED_HOSTS: {text!r} has no valid port (1-65535 or *)")
        return cls(host, int(port))

    def matches(self, host: str, port: int, default_port: int) -> bool:
        if self.port != 0 and port != (self.port or default_port):
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])  # ".example.org": one label or more before it
        return host == self.host


def parse_host_patterns(text: str) -> tuple[HostPattern, ...]:
    """WEBHOOK_ALLOWED_HOSTS as patterns (none: callbacks are off); ValueError names a malformed entry."""
    return tuple(HostPattern.parse(entry) for entry in text.split(",") if entry.strip())


def check_callback_url(url: str, allowed: tuple[HostPattern, ...]) -> str:
    """The URL, if the service may call it; CallbackRefused says why not.

    The URL is parsed by httpx, the client that will send the request, so what is checked is what is called.
    """
    if not allowed:
        raise CallbackRefused("callbacks are turned off on this service (WEBHOOK_ALLOWED_HOSTS is empty)")
    if len(url) > MAX_URL_LENGTH:
        raise CallbackRefused(f"callback_url is longer than {MAX_URL_LENGTH} characters")
    if any(char.isspace() or ord(char) < 32 for char in url):
        raise CallbackRefused("callback_url has spaces or control characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise CallbackRefused(f"callback_url is not a URL: {error}") from error
    if parsed.scheme not in SCHEMES:
        raise CallbackRefused("callback_url must be http or https")
    if not parsed.host:
        raise CallbackRefused("callback_url has no host")
    if parsed.userinfo:
        raise CallbackRefused("callback_url must not carry a user name or password: the signature authenticates "
                              "the service to the receiver")
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    default_port = SCHEMES[parsed.scheme]
    port = parsed.port or default_port
    if not any(pattern.matches(host, port, default_port) for pattern in allowed):
        shown = f"{host}:{port}" if port != default_port else host
        raise CallbackRefused(f"callback_url's host {shown} is not one this service may call (WEBHOOK_ALLOWED_HOSTS)")
    return url


@dataclass(frozen=True)
class Callback:
    """What a submission asks: call `url` when the batch has finished. `api_url` is the service's base URL as the
    client reached it, from which the batch's links in the payload are made."""

    url: str
    api_url: str

    def links(self, batch_id: str) -> tuple[str, str]:
        """The batch's URL and its CSV's, absolute."""
        batch_url = f"{self.api_url.rstrip('/')}/batches/{batch_id}"
        return batch_url, f"{batch_url}?format=csv"


class CallbackState(StrEnum):
    PENDING = "pending"
    """The batch has not finished, or the next attempt is waiting its time."""
    DELIVERING = "delivering"
    """An attempt is under way (or its worker died, and the attempt is taken over when its lease ends)."""
    DELIVERED = "delivered"
    """The receiver answered 2xx."""
    FAILED = "failed"
    """Given up: the receiver answered 3xx or 4xx, or WEBHOOK_MAX_AGE passed while it did not answer 2xx."""
    SKIPPED = "skipped"
    """A report with nothing to send: no image of the batch was classified (service/reports.py)."""


@dataclass(frozen=True)
class CallbackStatus:
    """A batch's callback, as kept with the batch (service/deliveries.py writes it)."""

    state: CallbackState
    attempts: int
    """Attempts started, the one under way included."""
    delivery_id: str | None = None
    """Set when the batch finished (the delivery became due); the same on every attempt."""
    last_status: int | None = None
    """The receiver's HTTP status at the last attempt that had an answer."""
    last_error: str | None = None
    """Why the last attempt had no usable answer (refused, timed out), or why it was given up."""
    next_attempt_at: float | None = None
    """When a pending retry is due (unix seconds)."""

    @classmethod
    def pending(cls) -> "CallbackStatus":
        """A callback just asked: the batch has not finished."""
        return cls(state=CallbackState.PENDING, attempts=0)

    @classmethod
    def of(cls, fields: Mapping[str, str], channel: str = "callback") -> "CallbackStatus | None":
        """From a batch hash's `<channel>_*` fields (service/channels.py: a report's delivery is kept as the
        callback's is); None for a batch that did not ask for that channel."""
        if f"{channel}_state" not in fields:
            return None
        field = {name: fields.get(f"{channel}_{name}") or None
                 for name in ("state", "attempts", "delivery", "last_status", "last_error", "next_at")}
        return cls(state=CallbackState(field["state"] or CallbackState.PENDING),
                   attempts=int(field["attempts"] or 0),
                   delivery_id=field["delivery"],
                   last_status=int(field["last_status"]) if field["last_status"] else None,
                   last_error=field["last_error"],
                   next_attempt_at=float(field["next_at"]) if field["next_at"] else None)


def payload(fields: Mapping[str, str], *, batch_id: str, notice: str) -> dict[str, Any]:
    """The JSON a finished batch's callback carries, from its batch hash: counts and links, never an image."""
    statuses = ("queued", "running", "succeeded", "failed", "canceled")
    return {
        "event": "batch.finished",
        "delivery_id": fields["callback_delivery"],
        "batch_id": batch_id,
        "total": int(fields["total"]),
        "counts": {status: int(fields.get(status, 0)) for status in statuses},
        "batch_url": fields["callback_batch_url"],
        "csv_url": fields["callback_csv_url"],
        "created_at": fields["created_at"],
        "finished_at": fields.get("finished_at") or None,
        "notice": notice,
    }


def signed_request(body_of: dict[str, Any], *, secret: str, delivery_id: str,
                   timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """The body, as sent and signed, and the headers of a callback request."""
    body = json.dumps(body_of, separators=(",", ":")).encode()
    return body, {"Content-Type": "application/json", "User-Agent": USER_AGENT, DELIVERY_HEADER: delivery_id,
                  SIGNATURE_HEADER: signature_header(secret, body, timestamp=timestamp)}


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    GIVE_UP = "give-up"


FIRST_RETRY = 2.0
"""Seconds before the first retry; each later one waits twice as long as the one before."""

MAX_RETRY_WAIT = 600.0
"""Longest wait between two attempts, in seconds."""


def verdict(status: int | None) -> Verdict:
    """What an attempt's answer means: 2xx delivered; 5xx, or no answer (refused, timed out), retried; a redirect
    (never followed) or 4xx is given up at once, since sending the same request again cannot help."""
    if status is None or status >= 500:
        return Verdict.RETRY
    return Verdict.DELIVERED if 200 <= status < 300 else Verdict.GIVE_UP


def retry_wait(attempts: int) -> float:
    """Seconds to wait after the `attempts`-th attempt failed and may be retried: 2, 4, 8, ... up to 600."""
    return min(FIRST_RETRY * 2.0 ** max(attempts - 1, 0), MAX_RETRY_WAIT)
