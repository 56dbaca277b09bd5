"""An API on another host cut off from Redis without a word: it answers 503 with Retry-After within seconds rather
than hanging its clients, and serves again at once when the network heals.

The cut drops, inside the API's namespace, only the packets to and from Redis's port (both ways, no reset): the
test still reaches the API, as a client in front of a partitioned API would.
"""

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.connections import CONNECT_TIMEOUT, RETRIES, SOCKET_TIMEOUT
from tests.hosts.network import Namespace
from tests.hosts.services import Processes, RedisServer, service_env

pytestmark = pytest.mark.hosts

ANSWERED_WITHIN = 10.0
"""Seconds a request may take to answer 503 while Redis does not answer (the service's promise to clients)."""
RECOVERED_WITHIN = 2.0
"""Seconds after the heal by which the API serves again."""


def test_the_api_cut_off_from_redis_answers_503_at_once_and_serves_again_once_healed(
        make_namespace: Callable[[], Namespace], make_redis: Callable[..., RedisServer], processes: Processes,
        radiographs: list[Path], record_property: Callable[[str, object], None]):
    # What the connection settings promise: a command on a pooled connection waits SOCKET_TIMEOUT for its answer,
    # then is sent again on a new connection, whose opening waits CONNECT_TIMEOUT and is itself retried (redis-py
    # retries the connect with the same policy): 5 + 2 x 2 s.
    assert SOCKET_TIMEOUT + RETRIES * (RETRIES + 1) * CONNECT_TIMEOUT < ANSWERED_WITHIN

    other_host = make_namespace()
    redis = make_redis(other_host)
    _, url = processes.start_api(service_env(redis.url(other_host), {}), other_host)
    unknown = f"/jobs/{uuid.uuid4()}"
    image = {"files": (radiographs[0].name, radiographs[0].read_bytes())}
    figures: dict[str, float] = {}
    # The client waits far longer than the bound, so that a slow answer is measured rather than cut short.
    with httpx.Client(base_url=url, timeout=60) as client:
        # Connections in the API's pools, in use: the ones a partition leaves dead.
        assert client.get(unknown).status_code == 404
        assert client.post("/jobs", files=image).status_code == 202

        other_host.cut(port=redis.port)
        try:
            for name, request in (("get_unknown_job", lambda: client.get(unknown)),
                                  ("post_jobs", lambda: client.post("/jobs", files=image))):
                answer, figures[f"{name}_503_after_s"] = timed(request)
                assert answer.status_code == 503, answer.text
                assert answer.headers["content-type"] == "application/problem+json"
                assert int(answer.headers["retry-after"]) > 0
                assert "Redis" in answer.json()["detail"]
                assert figures[f"{name}_503_after_s"] <= ANSWERED_WITHIN
        finally:
            other_host.heal()

        answer, figures["get_unknown_job_after_heal_s"] = timed(lambda: client.get(unknown))
        assert answer.status_code == 404
        answer, figures["post_jobs_after_heal_s"] = timed(lambda: client.post("/jobs", files=image))
        assert answer.status_code == 202
        (job,) = answer.json()["jobs"]
        answer, figures["get_job_after_heal_s"] = timed(lambda: client.get(f"/jobs/{job['id']}"))
        assert answer.status_code == 200
        assert answer.json()["status"] == "queued"
        for name in ("get_unknown_job_after_heal_s", "post_jobs_after_heal_s", "get_job_after_heal_s"):
            assert figures[name] <= RECOVERED_WITHIN, f"{name}: {figures[name]:.1f} s"

    for name, value in figures.items():
        record_property(name, round(value, 2))
    print({name: round(value, 2) for name, value in figures.items()})


def timed(request: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = request()
    return answer, time.monotonic() - started
