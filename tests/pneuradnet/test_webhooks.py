"""Signing and verifying callbacks: what a receiver relies on to trust a request came from the service."""

import hashlib
import hmac
import json

import pytest

from pneuradnet.client import verify_webhook
from pneuradnet.webhooks import SIGNATURE_HEADER, WebhookSignatureError, signature_header

SECRET = "a-deployment-secret-0123"
BODY = json.dumps({"batch_id": "b1", "counts": {"succeeded": 2}}).encode()
NOW = 1_700_000_000


def headers(value: str) -> dict[str, str]:
    return {SIGNATURE_HEADER: value}


def test_a_signature_is_the_documented_hmac_of_time_and_body():
    value = signature_header(SECRET, BODY, timestamp=NOW)
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert value == f"t={NOW},v1={expected}"


def test_a_signed_body_verifies_and_gives_its_payload():
    signed = headers(signature_header(SECRET, BODY, timestamp=NOW))
    assert verify_webhook(SECRET, signed, BODY, now=NOW + 10) == {"batch_id": "b1", "counts": {"succeeded": 2}}
    # Header names in any case, as frameworks hand them over.
    assert verify_webhook(SECRET, {SIGNATURE_HEADER.lower(): signed[SIGNATURE_HEADER]}, BODY, now=NOW)


@pytest.mark.parametrize("body, secret", [(BODY.replace(b"2", b"3"), SECRET), (BODY, "another-secret-0123456")])
def test_an_altered_body_or_another_secret_is_refused(body: bytes, secret: str):
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_webhook(secret, headers(signature_header(SECRET, BODY, timestamp=NOW)), body, now=NOW)


@pytest.mark.parametrize("moment", [NOW + 301, NOW - 301])
def test_a_stale_or_future_signature_is_refused(moment: int):
    with pytest.raises(WebhookSignatureError, match="300 s"):
        verify_webhook(SECRET, headers(signature_header(SECRET, BODY, timestamp=NOW)), BODY, now=moment)
    assert verify_webhook(SECRET, headers(signature_header(SECRET, BODY, timestamp=NOW)), BODY, tolerance=400,
                          now=moment)


@pytest.mark.parametrize("value", ["", "t=abc,v1=00", f"t={NOW}", "v1=00", f"t={NOW},v1=é"])
def test_a_malformed_header_is_refused(value: str):
    with pytest.raises(WebhookSignatureError):
        verify_webhook(SECRET, headers(value), BODY, now=NOW)


def test_a_missing_header_or_secret_is_refused():
    with pytest.raises(WebhookSignatureError, match="no X-Pneuradnet-Signature"):
        verify_webhook(SECRET, {}, BODY, now=NOW)
    with pytest.raises(WebhookSignatureError, match="no secret"):
        verify_webhook("", headers(signature_header("", BODY, timestamp=NOW)), BODY, now=NOW)


def test_any_of_several_signatures_may_match_for_a_secret_rotation():
    good = signature_header(SECRET, BODY, timestamp=NOW).split(",")[1]
    assert verify_webhook(SECRET, headers(f"t={NOW},v1={'0' * 64},{good}"), BODY, now=NOW)
