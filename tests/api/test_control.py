"""Overload and control: backpressure, cancelation, idempotent submission, access control by API key."""

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from service.jobstore import JobStatus, JobStore, Upload
from service.keys import PREFIX
from service.queue import BULK_QUEUE
from tests.live_service import TEST_REDIS_URL, enqueue, start_api
from tests.processes import stop

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def guarded_api(tmp_path_factory: pytest.TempPathFactory, broker_clean: None) -> Iterator[str]:
    """An API that needs keys and keeps a queue of at most 3 jobs."""
    process, url = start_api(tmp_path_factory.mktemp("guarded") / "api.log", API_KEYS="key-a, key-b",
                             MAX_QUEUE="3")
    yield url
    stop(process)


def as_key(url: str, key: str | None) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"} if key else {})


def test_a_full_queue_refuses_a_request_whole(guarded_api: str, store: JobStore):
    store.create_batch([Upload(f"{n}.png", b"x") for n in range(3)])  # stored, never enqueued: the queue is full
    broker = Redis.from_url(TEST_REDIS_URL)
    tasks_before = broker.llen(BULK_QUEUE)

    with as_key(guarded_api, "key-a") as client:
        answer = client.post("/jobs", files={"files": ("one-more.png", b"x")})

    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "30"
    assert "nothing of this request was queued" in answer.json()["detail"]
    assert store.queued_count() == 3
    assert broker.llen(BULK_QUEUE) == tasks_before


def test_keys_are_required_everywhere_but_health(guarded_api: str, store: JobStore):
    with as_key(guarded_api, None) as anonymous, as_key(guarded_api, "wrong") as stranger:
        assert anonymous.get("/healthz").status_code == 200
        for client in (anonymous, stranger):
            answer = client.get("/jobs/00000000-0000-4000-8000-000000000000")
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.headers["content-type"] == "application/problem+json"
            assert client.post("/jobs", files={"files": ("a.png", b"x")}).status_code == 401
            assert client.get("/models").status_code == 401
    assert store.queued_count() == 0


def test_a_key_sees_only_its_own_jobs_and_batches(guarded_api: str, client: httpx.Client, radiographs: list[Path]):
    with as_key(guarded_api, "key-a") as team_a, as_key(guarded_api, "key-b") as team_b:
        body = team_a.post("/jobs", files={"files": (radiographs[0].name, radiographs[0].read_bytes())}).json()
        job_id = body["jobs"][0]["id"]

        assert team_a.get(f"/jobs/{job_id}", params={"wait": 30}).json()["status"] == "succeeded"
        assert team_a.get(f"/batches/{body['batch_id']}").status_code == 200
        for path in (f"/jobs/{job_id}", f"/batches/{body['batch_id']}"):
            answer = team_b.get(path)
            assert answer.status_code == 404
            assert "there is no" in answer.json()["detail"]
        assert team_b.delete(f"/batches/{body['batch_id']}").status_code == 404


def test_a_canceled_job_never_runs(client: httpx.Client, store: JobStore, radiographs: list[Path]):
    image = radiographs[0].read_bytes()
    _, (canceled, kept), _ = store.create_batch([Upload("canceled.jpeg", image), Upload("kept.jpeg", image)])

    answer = client.delete(f"/jobs/{canceled.id}")
    assert answer.status_code == 200 and answer.json()["status"] == "canceled"
    enqueue([canceled.id])  # a task for it was already in the queue
    enqueue([kept.id])  # the one worker takes tasks in order: this one finishes after that one

    assert client.get(f"/jobs/{kept.id}", params={"wait": 30}).json()["status"] == "succeeded"
    job = store.get_job(canceled.id)
    assert job.status is JobStatus.CANCELED and job.started_at is None and job.result is None
    assert store.images([canceled.id])[0] is None


def test_only_unstarted_jobs_of_a_batch_are_canceled(client: httpx.Client, store: JobStore, radiographs: list[Path]):
    batch, (done, waiting), _ = store.create_batch([Upload("a.jpeg", radiographs[0].read_bytes()),
                                                   Upload("b.jpeg", radiographs[1].read_bytes())])
    enqueue([done.id])
    client.get(f"/jobs/{done.id}", params={"wait": 30})

    answer = client.delete(f"/batches/{batch.id}")

    assert answer.json() == {"batch_id": batch.id, "canceled": 1}
    assert client.get(f"/jobs/{waiting.id}").json()["status"] == "canceled"
    assert client.get(f"/jobs/{done.id}").json()["status"] == "succeeded"
    conflict = client.delete(f"/jobs/{done.id}")
    assert conflict.status_code == 409
    assert "only a queued job can be canceled" in conflict.json()["detail"]


def test_an_idempotency_key_makes_a_retried_submission_safe(client: httpx.Client, store: JobStore,
                                                           radiographs: list[Path]):
    files = [("files", (path.name, path.read_bytes())) for path in radiographs[:2]]
    headers = {"Idempotency-Key": "upload-2026-11-27-a"}

    first = client.post("/jobs", files=files, headers=headers)
    again = client.post("/jobs", files=files, headers=headers)
    other = client.post("/jobs", files=files[:1], headers=headers)

    assert first.status_code == again.status_code == 202
    assert again.json()["batch_id"] == first.json()["batch_id"]
    assert [job["id"] for job in again.json()["jobs"]] == [job["id"] for job in first.json()["jobs"]]
    assert other.status_code == 422
    assert "was used for other files" in other.json()["detail"]
    assert store.metrics()["jobs_submitted"] == 2


QUEUELESS_USER = "pneuradnet-test-queueless"


@pytest.fixture(scope="module")
def queueless_api(tmp_path_factory: pytest.TempPathFactory, broker_clean: None) -> Iterator[str]:
    """An API whose Redis user may use the job store's keys but not the broker's: Redis refuses every enqueue."""
    admin = Redis.from_url(TEST_REDIS_URL)
    password = secrets.token_hex(16)
    admin.acl_setuser(QUEUELESS_USER, enabled=True, passwords=[f"+{password}"], keys=[f"{PREFIX}:*"],
                      channels=["*"], categories=["+@all"])
    url = TEST_REDIS_URL.replace("redis://", f"redis://{QUEUELESS_USER}:{password}@", 1)
    try:
        process, api = start_api(tmp_path_factory.mktemp("queueless") / "api.log", REDIS_URL=url)
        yield api
        stop(process)
    finally:  # the user outlives the test otherwise: ACL users belong to the whole server, not to a database
        admin.acl_deluser(QUEUELESS_USER)
        admin.close()


def test_jobs_the_broker_refuses_are_withdrawn_and_a_retry_submits_anew(
        queueless_api: str, client: httpx.Client, store: JobStore, radiographs: list[Path]):
    upload = {"files": (radiographs[0].name, radiographs[0].read_bytes())}
    key = {"Idempotency-Key": "refused-then-retried"}
    with httpx.Client(base_url=queueless_api, timeout=60) as queueless:
        refused = queueless.post("/jobs", files=upload, headers=key)

    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "5"
    assert "nothing of this request was queued" in refused.json()["detail"]
    assert store.queued_count() == 0  # nothing waits for a task that will never come

    retried = client.post("/jobs", files=upload, headers=key)  # the same key, through an API that can enqueue
    assert retried.status_code == 202
    (job,) = retried.json()["jobs"]
    assert client.get(f"/jobs/{job['id']}", params={"wait": 30}).json()["status"] == "succeeded"
