"""POST /jobs?callback_url=: refused before anything is stored when callbacks are off or the host is not allowed;
accepted, the batch shows its callback pending with links as the client reached the API."""

import socket

from redis import Redis

from tests.api.routes.support import PROBLEM_JSON, Serve, images

SECRET = "route-test-secret-0123"


def stored_keys(redis_db: Redis) -> list[bytes]:
    return [key for key in redis_db.scan_iter("pneuradnet:*") if not key.startswith(b"pneuradnet:metrics")]


async def test_callbacks_are_refused_when_no_host_is_allowed(serve: Serve, redis_db: Redis):
    api = await serve(webhook_allowed_hosts="", webhook_secret="")
    answer = await api.post("/jobs", files=images("a.png"), params={"callback_url": "https://hooks.example.org/x"})
    assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM_JSON
    assert answer.json()["type"] == "urn:pneuradnet:problem:callbacks-disabled"
    assert "WEBHOOK_ALLOWED_HOSTS" in answer.json()["detail"]
    assert stored_keys(redis_db) == []


async def test_a_host_outside_the_allow_list_is_refused_nothing_stored_nothing_called(serve: Serve, redis_db: Redis):
    listener = socket.create_server(("127.0.0.1", 0))  # a receiver the allow-list does not name
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    api = await serve(webhook_allowed_hosts="hooks.example.org, 127.0.0.1:1", webhook_secret=SECRET)
    for url in (f"http://127.0.0.1:{port}/hook", "https://evil.example.net/x", "ftp://hooks.example.org/x"):
        answer = await api.post("/jobs", files=images("a.png"), params={"callback_url": url})
        assert answer.status_code == 422, answer.text
        assert answer.json()["type"] == "urn:pneuradnet:problem:invalid-callback-url"
    assert stored_keys(redis_db) == []
    try:
        listener.accept()
        raise AssertionError("the service connected to a host outside WEBHOOK_ALLOWED_HOSTS")
    except TimeoutError:
        pass
    finally:
        listener.close()


async def test_an_accepted_callback_is_pending_with_absolute_links(serve: Serve, redis_db: Redis):
    api = await serve(webhook_allowed_hosts="hooks.example.org", webhook_secret=SECRET)
    answer = await api.post("/jobs", files=images("a.png", "b.png"),
                            params={"callback_url": "https://hooks.example.org/done"})
    assert answer.status_code == 202, answer.text
    batch_id = answer.json()["batch_id"]
    batch = (await api.get(f"/batches/{batch_id}")).json()
    assert batch["callback"] == {"state": "pending", "attempts": 0, "delivery_id": None, "last_status": None,
                                 "last_error": None, "next_attempt_at": None}
    fields = {key.decode(): value.decode() for key, value in redis_db.hgetall(f"pneuradnet:batch:{batch_id}").items()}
    assert fields["callback_batch_url"] == f"http://api.test/batches/{batch_id}"
    assert fields["callback_csv_url"] == f"http://api.test/batches/{batch_id}?format=csv"
    plain = await api.post("/jobs", files=images("c.png"))
    assert (await api.get(f"/batches/{plain.json()['batch_id']}")).json()["callback"] is None


async def test_a_repeat_with_another_callback_is_another_submission(serve: Serve):
    api = await serve(webhook_allowed_hosts="hooks.example.org", webhook_secret=SECRET)
    key = {"Idempotency-Key": "study-7"}
    first = await api.post("/jobs", files=images("a.png"), headers=key,
                           params={"callback_url": "https://hooks.example.org/one"})
    again = await api.post("/jobs", files=images("a.png"), headers=key,
                           params={"callback_url": "https://hooks.example.org/one"})
    other = await api.post("/jobs", files=images("a.png"), headers=key,
                           params={"callback_url": "https://hooks.example.org/two"})
    assert first.json()["batch_id"] == again.json()["batch_id"]
    assert other.status_code == 422 and other.json()["type"] == "urn:pneuradnet:problem:idempotency-conflict"
