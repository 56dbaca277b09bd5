"""Which callback URLs the service calls (WEBHOOK_ALLOWED_HOSTS), what a callback carries, and what an answer means.
No processes, no Redis."""

import json

import pytest
from pydantic import ValidationError

from pneuradnet.client import verify_webhook
from service.notice import DISCLAIMER
from service.settings import Settings
from service.webhooks import (
    Callback,
    CallbackRefused,
    HostPattern,
    Verdict,
    check_callback_url,
    parse_host_patterns,
    payload,
    retry_wait,
    signed_request,
    verdict,
)

ALLOWED = parse_host_patterns("hooks.example.org, *.clinic.example, 127.0.0.1:8123, lab.example:*, [::1]:9000")


@pytest.mark.parametrize("url", [
    "https://hooks.example.org/batch-done",
    "http://hooks.example.org/x",           # http's default port
    "https://HOOKS.example.org./x?a=1",     # case and trailing dot
    "https://a.clinic.example/x",
    "https://a.b.clinic.example/x",
    "http://127.0.0.1:8123/hook",
    "https://lab.example:4443/x",
    "http://[::1]:9000/x",
])
def test_urls_the_allow_list_names_are_accepted(url: str):
    assert check_callback_url(url, ALLOWED) == url


@pytest.mark.parametrize("url, reason", [
    ("https://evil.example.net/x", "not one this service may call"),
    ("https://hooks.example.org:8443/x", "hooks.example.org:8443"),   # another port of an allowed host
    ("https://clinic.example/x", "not one"),                          # *. is subdomains only
    ("https://evilclinic.example/x", "not one"),
    ("https://hooks.example.org.evil.net/x", "not one"),
    ("http://127.0.0.1/x", "not one"),                                # the named port only
    ("http://127.0.0.1:8124/x", "not one"),
    ("ftp://hooks.example.org/x", "http or https"),
    ("file:///etc/passwd", "http or https"),
    ("https://user:pw@hooks.example.org/x", "user name or password"),
    ("https://hooks.example.org/a b", "spaces"),
    ("hooks.example.org/x", "http or https"),
    ("https://hooks.example.org/" + "x" * 2048, "longer than"),
])
def test_other_urls_are_refused_with_the_reason(url: str, reason: str):
    with pytest.raises(CallbackRefused, match=reason):
        check_callback_url(url, ALLOWED)


def test_with_no_pattern_callbacks_are_off():
    with pytest.raises(CallbackRefused, match="turned off"):
        check_callback_url("https://hooks.example.org/x", ())


@pytest.mark.parametrize("text", ["*", "*.org", "a*.example.org", "host:0", "host:99999", "host:http", "a..b",
                                  "[::1]x", "user@host", "host/path"])
def test_malformed_patterns_are_refused(text: str):
    with pytest.raises(ValueError, match="WEBHOOK_ALLOWED_HOSTS"):
        HostPattern.parse(text)


def test_settings_refuse_callbacks_without_a_strong_enough_secret():
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET"):
        Settings(webhook_allowed_hosts="hooks.example.org", webhook_secret="")
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET"):
        Settings(webhook_allowed_hosts="hooks.example.org", webhook_secret="short")
    with pytest.raises(ValidationError, match="not a host pattern"):
        Settings(webhook_allowed_hosts="hooks.example.org, bad/one", webhook_secret="s" * 16)
    on = Settings(webhook_allowed_hosts="hooks.example.org", webhook_secret="s" * 16)
    assert on.webhook_host_patterns == (HostPattern("hooks.example.org"),)
    assert Settings(webhook_allowed_hosts="", webhook_secret="").webhook_host_patterns == ()


FIELDS = {"callback_delivery": "d" * 32, "total": "3", "succeeded": "2", "failed": "1", "queued": "0",
          "callback_url": "https://hooks.example.org/x", "created_at": "2024-01-01T00:00:00.000Z",
          "finished_at": "2024-01-01T01:00:00.000Z",
          "callback_batch_url": "http://api.test/batches/b1", "callback_csv_url": "http://api.test/batches/b1?format=csv"}


def test_the_payload_has_counts_links_and_the_notice_and_is_signed():
    sent = payload(FIELDS, batch_id="b1", notice=DISCLAIMER)
    assert sent == {"event": "batch.finished", "delivery_id": "d" * 32, "batch_id": "b1", "total": 3,
                    "counts": {"queued": 0, "running": 0, "succeeded": 2, "failed": 1, "canceled": 0},
                    "batch_url": "http://api.test/batches/b1", "csv_url": "http://api.test/batches/b1?format=csv",
                    "created_at": "2024-01-01T00:00:00.000Z", "finished_at": "2024-01-01T01:00:00.000Z",
                    "notice": DISCLAIMER}
    body, headers = signed_request(sent, secret="s" * 16, delivery_id="d" * 32)
    assert headers["X-Pneuradnet-Delivery"] == "d" * 32
    assert verify_webhook("s" * 16, headers, body) == json.loads(body) == sent


def test_links_are_absolute_from_the_base_url_the_client_used():
    assert Callback("https://h/x", "https://radiology.example/pneuradnet/").links("b1") == (
        "https://radiology.example/pneuradnet/batches/b1", "https://radiology.example/pneuradnet/batches/b1?format=csv")


@pytest.mark.parametrize("status, expected", [(200, Verdict.DELIVERED), (204, Verdict.DELIVERED),
                                              (301, Verdict.GIVE_UP), (400, Verdict.GIVE_UP),
                                              (410, Verdict.GIVE_UP), (500, Verdict.RETRY), (503, Verdict.RETRY),
                                              (None, Verdict.RETRY)])
def test_what_an_answer_means(status: int | None, expected: Verdict):
    assert verdict(status) is expected


def test_retries_back_off_exponentially_up_to_a_ceiling():
    assert [retry_wait(n) for n in range(1, 6)] == [2, 4, 8, 16, 32]
    assert retry_wait(30) == 600
