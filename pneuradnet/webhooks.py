"""The service's signed callbacks (webhooks): how a body is signed, and how a receiver verifies it.

The service POSTs a JSON body with two headers:

- `X-Pneuradnet-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`, keyed with the deployment's
  WEBHOOK_SECRET. Signing the time with the body lets a receiver refuse an old request replayed.
- `X-Pneuradnet-Delivery: <id>`, the same on every retry of one delivery, so a receiver can drop duplicates.

Pure functions of the standard library: the service signs with `signature_header`, a receiver verifies with
`verify_webhook` (also importable from `pneuradnet.client`).
"""

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from pneuradnet.errors import PneuradnetError

SIGNATURE_HEADER = "X-Pneuradnet-Signature"
DELIVERY_HEADER = "X-Pneuradnet-Delivery"

SIGNATURE_VERSION = "v1"
"""The scheme of the signatures the service sends: HMAC-SHA256 of `<t>.<raw body>`, in lowercase hex."""

DEFAULT_TOLERANCE = 300
"""Seconds a signature's time may differ from the receiver's clock before the request is refused as stale."""

MAX_TIMESTAMP_DIGITS = 12
"""The most ASCII digits a signature's `t=` may have (unix seconds to the year 33658); a longer one is malformed,
never read into a number too large for the clock arithmetic."""


class WebhookSignatureError(PneuradnetError):
    """A callback whose signature is missing, malformed, wrong or stale: do not act on it."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `<timestamp>.<body>` keyed with `secret`."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    """The value of X-Pneuradnet-Signature for `body`, signed now (or at `timestamp`, unix seconds)."""
    moment = int(time.time()) if timestamp is None else timestamp
    return f"t={moment},{SIGNATURE_VERSION}={signature(secret, moment, body)}"


def verify_webhook(secret: str, headers: Mapping[str, str], body: bytes, tolerance: float = DEFAULT_TOLERANCE, *,
                   now: float | None = None) -> dict[str, Any]:
    """The callback's JSON payload, once its signature is checked; raises WebhookSignatureError otherwise.

    `headers` are the request's (any case of the names); `body` its raw bytes, exactly as received (verify before
    parsing). A signature made more than `tolerance` seconds away from `now` (default: this clock) is refused, so a
    recorded request cannot be replayed later. Comparisons take constant time. Several `v1=` entries are accepted
    (any one may match). Whatever the header holds, the only error raised is WebhookSignatureError.
    """
    if not secret:
        raise WebhookSignatureError("no secret to verify with: pass the service's WEBHOOK_SECRET")
    value = next((text for name, text in headers.items() if name.lower() == SIGNATURE_HEADER.lower()), None)
    if value is None:
        raise WebhookSignatureError(f"the request has no {SIGNATURE_HEADER} header")
    timestamp, signatures = _parse(value)
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > tolerance:
        raise WebhookSignatureError(f"the signature was made {age:.0f} s from now, more than {tolerance:g} s: "
                                    "a stale or replayed request, or clocks apart")
    expected = signature(secret, timestamp, body).encode()
    # Every candidate is compared, whichever matches, so the time taken says nothing of which one did (as bytes:
    # compare_digest refuses a str that is not ASCII).
    if not sum(hmac.compare_digest(expected, candidate.encode()) for candidate in signatures):
        raise WebhookSignatureError("the signature does not match the body: a wrong secret, or an altered body")
    try:
        payload = json.loads(body)
    except ValueError as error:
        raise WebhookSignatureError(f"the signed body is not JSON: {error}") from error
    if not isinstance(payload, dict):
        raise WebhookSignatureError("the signed body is not a JSON object")
    return payload


def _parse(value: str) -> tuple[int, list[str]]:
    """The time and the v1 signatures of a signature header; entries of other versions are ignored.

    The time is 1 to MAX_TIMESTAMP_DIGITS ASCII digits (str.isdigit alone would take "²", which int() refuses, and
    int() alone Arabic-Indic digits, U+0660 to U+0669). A signature that is not ASCII is ignored: it cannot be the
    hex of one.
    """
    timestamp: int | None = None
    signatures: list[str] = []
    for entry in value.split(","):
        name, _, text = entry.strip().partition("=")
        if name == "t":
            if not (text.isascii() and text.isdigit() and len(text) <= MAX_TIMESTAMP_DIGITS):
                raise WebhookSignatureError(f"malformed {SIGNATURE_HEADER}: t= is not unix seconds")
            timestamp = int(text)
        elif name == SIGNATURE_VERSION and text and text.isascii():
            signatures.append(text.lower())
    if timestamp is None or not signatures:
        raise WebhookSignatureError(f"malformed {SIGNATURE_HEADER}: expected t=<unix seconds>,v1=<hex>")
    return timestamp, signatures
