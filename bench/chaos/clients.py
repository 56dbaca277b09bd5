"""The clients: one thread per API key, each sending the operations its seed plans (interactive images, bulk
batches, ZIPs, idempotent repeats, some with a callback) to either API, retrying "not now" answers and lost
connections, following its batches, and recording every request in the history."""

import itertools
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx

from bench.chaos.history import Call
from bench.chaos.images import loose_files, zip_file
from bench.chaos.settings import (
    API_KEYS,
    APIS,
    BULK_IMAGES,
    CALLBACK_SHARE,
    FIRST_BACKOFF,
    FOLLOW_SECONDS,
    FOLLOW_WAIT,
    HTTP_TIMEOUT,
    IDEMPOTENT_BULK_SHARE,
    INTERACTIVE_IMAGES,
    MAX_BACKOFF,
    MAX_TRIES,
    OP_WEIGHTS,
    RADIOGRAPH_COUNT,
    RETRIED_STATUSES,
    THINK_SECONDS,
    ZIP_MEMBERS,
    seeded,
)

if TYPE_CHECKING:
    from bench.chaos.campaign import Campaign


@dataclass(frozen=True)
class Plan:
    """What one client operation sends, decided by its own RNG."""

    op: str
    kind: str
    sources: list[int]
    zipped: bool
    callback: bool
    idempotency_key: str | None
    sendings: int
    """1, or 2 for an idempotent repeat."""
    concurrent: bool
    think: float


def plan_op(seed: int, client: int, number: int) -> Plan:
    """Operation `number` of client `client`: the same for a seed whatever happened before it."""
    rng = seeded(seed, "client", client, "op", number)
    kind = rng.choices(list(OP_WEIGHTS), weights=list(OP_WEIGHTS.values()))[0]
    idempotent = kind.startswith("idempotent")
    if kind == "interactive" or (idempotent and rng.random() >= IDEMPOTENT_BULK_SHARE):
        count = rng.randint(*INTERACTIVE_IMAGES)
    elif kind == "zip":
        count = rng.randint(*ZIP_MEMBERS)
    else:
        count = rng.randint(*BULK_IMAGES)
    op = f"{client}.{number}"
    return Plan(op=op, kind=kind, sources=[rng.randrange(RADIOGRAPH_COUNT) for _ in range(count)], zipped=kind == "zip",
                callback=rng.random() < CALLBACK_SHARE, idempotency_key=f"chaos-{seed}-{op}" if idempotent else None,
                sendings=2 if idempotent else 1, concurrent=kind == "idempotent-concurrent",
                think=rng.uniform(*THINK_SECONDS))


class Client(threading.Thread):
    """One API key's client: operations one after the other, each followed until its batches finish (or for
    FOLLOW_SECONDS), every request recorded in the history."""

    def __init__(self, campaign: "Campaign", index: int) -> None:
        super().__init__(name=f"client-{index}", daemon=True)
        self.campaign = campaign
        self.index = index
        self.operations = 0

    def run(self) -> None:
        for number in itertools.count(1):
            if self.campaign.stopping.is_set():
                return
            plan = plan_op(self.campaign.seed, self.index, number)
            self.perform(plan)
            self.operations += 1
            self.campaign.stopping.wait(plan.think)

    def perform(self, plan: Plan) -> None:
        files = (zip_file if plan.zipped else loose_files)(plan.op, plan.sources, self.campaign.images)
        if plan.concurrent:
            answers: list[dict | None] = [None, None]

            def send(repeat: int) -> None:
                answers[repeat] = self.submit(plan, files, repeat)

            senders = [threading.Thread(target=send, args=(repeat,)) for repeat in range(plan.sendings)]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
        else:
            answers = [self.submit(plan, files, repeat) for repeat in range(plan.sendings)]
        batches = list(dict.fromkeys(answer["batch_id"] for answer in answers if answer))
        self.follow(plan, batches)

    def submit(self, plan: Plan, files: list, repeat: int) -> dict | None:
        """POST /jobs until it is answered for good; the 202's body, or None."""
        headers = {"Authorization": f"Bearer {API_KEYS[self.index]}"}
        if plan.idempotency_key:
            headers["Idempotency-Key"] = plan.idempotency_key
        params = {"callback_url": f"{self.campaign.receiver.url}?op={plan.op}"} if plan.callback else {}
        with httpx.Client(timeout=HTTP_TIMEOUT) as http:
            for attempt in range(1, MAX_TRIES + 1):
                rng = seeded(self.campaign.seed, "client", plan.op, "repeat", repeat, "attempt", attempt)
                api = rng.randrange(APIS)
                call = Call(op=plan.op, kind=plan.kind, method="POST", path="/jobs", api=api, key=self.index,
                            repeat=repeat, attempt=attempt, idempotency_key=plan.idempotency_key,
                            sources=plan.sources, callback=plan.callback)
                url = f"{self.campaign.fleet.api_urls[api]}/jobs"
                response = self.campaign.exchange(call, partial(http.post, url, files=files, headers=headers,
                                                                params=params))
                if response is not None and response.status_code == 202:
                    return response.json()
                if response is not None and response.status_code not in RETRIED_STATUSES:
                    return None
                if attempt == MAX_TRIES or self.campaign.stopping.wait(pause(response, attempt)):
                    return None
        return None

    def follow(self, plan: Plan, batches: list[str]) -> None:
        """Long-poll each batch until it has finished, the follow time is over, or the run is."""
        deadline = time.monotonic() + FOLLOW_SECONDS
        headers = {"Authorization": f"Bearer {API_KEYS[self.index]}"}
        with httpx.Client(timeout=HTTP_TIMEOUT + FOLLOW_WAIT) as http:
            for batch_id in batches:
                for attempt in itertools.count(1):
                    if self.campaign.stopping.is_set() or time.monotonic() > deadline:
                        return
                    api = seeded(self.campaign.seed, "poll", plan.op, batch_id, attempt).randrange(APIS)
                    call = Call(op=plan.op, kind="poll", method="GET", path=f"/batches/{batch_id}", api=api,
                                key=self.index, attempt=attempt)
                    url = f"{self.campaign.fleet.api_urls[api]}/batches/{batch_id}"
                    response = self.campaign.exchange(call, partial(
                        http.get, url, headers=headers, params={"wait": FOLLOW_WAIT, "page_size": 1000}))
                    if response is not None and response.status_code == 200 and batch_done(response.json()):
                        break
                    if response is None or response.status_code != 200:
                        self.campaign.stopping.wait(pause(response, attempt))


def batch_done(body: dict) -> bool:
    """Whether a GET /batches/{id} answer says every job has finished."""
    counts = body.get("counts", {})
    return sum(counts.get(status, 0) for status in ("succeeded", "failed", "canceled")) >= body.get("total", 0)


def pause(response: httpx.Response | None, attempt: int) -> float:
    """Seconds before the next try: the answer's Retry-After, else a backoff."""
    retry_after = response.headers.get("retry-after", "") if response is not None else ""
    return float(retry_after) if retry_after.isdigit() else min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (attempt - 1))


def kept_body(call: Call, response: httpx.Response) -> Any:
    """What the history keeps of an answer: enough for the checker, not the results."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if not isinstance(body, dict):
        return None
    if response.status_code == 202:
        return {"batch_id": body.get("batch_id"), "lane": body.get("lane"),
                "jobs": [{"id": job["id"], "filename": job["filename"]} for job in body.get("jobs", [])]}
    if response.status_code >= 400:
        return {"type": body.get("type"), "detail": body.get("detail")}
    if call.kind == "poll":
        return {"total": body.get("total"), "counts": body.get("counts")}
    return None
