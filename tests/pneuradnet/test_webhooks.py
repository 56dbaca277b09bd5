"""Signing and verifying callbacks: what a receiver relies on to trust a request came from the service."""

import hashlib
import hmac
import json
import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pneuradnet.client import verify_webhook
from pneuradnet.webhooks import SIGNATURE_HEADER, WebhookSignatureError, signature, signature_header

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


@pytest.mark.parametrize("moment", [
    "9" * 400,   # int() reads it, but `now - t` overflows a float
    "9" * 5000,  # more digits than int() reads
    "²",         # str.isdigit() says yes; int() says no
    "\u0661\u0667" + "\u0660" * 8,  # 1700000000 in Arabic-Indic digits: int() reads them, the service sends ASCII
    "1" * 13,    # ASCII digits, but more than unix seconds need
])
def test_a_time_that_is_not_a_few_ascii_digits_is_refused_as_malformed(moment: str):
    # Signed with the very text, so nothing but the time can be wrong.
    mac = hmac.new(SECRET.encode(), f"{moment}.".encode() + BODY, hashlib.sha256).hexdigest()
    with pytest.raises(WebhookSignatureError, match="malformed"):
        verify_webhook(SECRET, headers(f"t={moment},v1={mac}"), BODY, now=NOW)


VALID = signature(SECRET, NOW, BODY)
# Any text; half the time with lone surrogates, which a framework may hand over for bytes that are not UTF-8 (and
# which st.characters alone almost never draws).
ANY_TEXT = st.text(st.characters()) | st.text(st.characters() | st.integers(0xD800, 0xDFFF).map(chr))
DIGIT_LIKE = st.characters(categories=["Nd", "Nl", "No"])  # ASCII digits, and those str.isdigit() or int() take
TIMES = st.one_of(
    ANY_TEXT,
    st.text(DIGIT_LIKE),
    st.builds(operator.mul, DIGIT_LIKE, st.integers(1, 5000)),  # one digit many times: past a float, past int()
)


@given(st.one_of(
    ANY_TEXT,
    st.builds("t={},v1={}".format, TIMES, st.one_of(ANY_TEXT, st.just(VALID))),
    st.builds(f"t={NOW},v1={{}}".format, ANY_TEXT),  # a good time, then any signature (a surrogate broke encode())
    st.integers().map(lambda moment: signature_header(SECRET, BODY, timestamp=moment)),
    st.integers(NOW - 400, NOW + 400).map(lambda moment: signature_header(SECRET, BODY, timestamp=moment)),
))
def test_any_header_gives_the_payload_or_the_documented_error(value: str):
    # A receiver that catches WebhookSignatureError answers every request it is sent, and never a 500.
    try:
        payload = verify_webhook(SECRET, headers(value), BODY, now=NOW)
    except WebhookSignatureError:
        return
    assert payload == json.loads(BODY)


def test_a_missing_header_or_secret_is_refused():
    with pytest.raises(WebhookSignatureError, match="no X-Pneuradnet-Signature"):
        verify_webhook(SECRET, {}, BODY, now=NOW)
    with pytest.raises(WebhookSignatureError, match="no secret"):
        verify_webhook("", headers(signature_header("", BODY, timestamp=NOW)), BODY, now=NOW)


def test_any_of_several_signatures_may_match_for_a_secret_rotation():
    good = signature_header(SECRET, BODY, timestamp=NOW).split(",")[1]
    assert verify_webhook(SECRET, headers(f"t={NOW},v1={'0' * 64},{good}"), BODY, now=NOW)
