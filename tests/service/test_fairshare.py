"""Fair share of the bulk lane, driven through its Lua scripts on a real Redis, with a FIFO list standing in for
the broker's bulk queue."""

import time
from collections import deque
from collections.abc import Iterator

import pytest
from redis import Redis

from service.fairshare import IN_FLIGHT_EXPIRY, Chunk, FairShare, window_for
from service.keys import fair_in_flight_key
from tests.live_service import TEST_REDIS_URL, wipe_jobs


@pytest.fixture
def fair(broker_clean: None) -> Iterator[FairShare]:
    wipe_jobs()
    fair_share = FairShare(TEST_REDIS_URL, ttl=600)
    yield fair_share
    fair_share.close()
    wipe_jobs()


def chunks(owner: str, count: int) -> list[Chunk]:
    return [Chunk(id=f"{owner}-{n}", job_ids=[f"{owner}-job-{n}"]) for n in range(count)]


def test_a_key_hands_over_only_its_window_and_the_rest_as_chunks_finish(fair: FairShare):
    released = fair.admit("alice", chunks("alice", 5), window=2)

    assert [chunk.id for chunk in released] == ["alice-0", "alice-1"]
    assert [chunk.id for chunk in fair.finish("alice", "alice-0", window=2)] == ["alice-2"]
    assert fair.keys_waiting() == 1


def test_a_finish_run_twice_answers_the_same_chunks_and_releases_no_more(fair: FairShare):
    fair.admit("alice", chunks("alice", 4), window=1)

    first = fair.finish("alice", "alice-0", window=1)
    again = fair.finish("alice", "alice-0", window=1)

    assert first == again == [Chunk(id="alice-1", job_ids=["alice-job-1"])]
    assert [chunk.id for chunk in fair.finish("alice", "alice-1", window=1)] == ["alice-2"]


def test_keys_with_work_waiting_take_turns_on_a_first_in_first_out_broker(fair: FairShare):
    broker: deque[tuple[str, Chunk]] = deque()
    broker.extend(("alice", chunk) for chunk in fair.admit("alice", chunks("alice", 10), window=2))
    broker.extend(("bob", chunk) for chunk in fair.admit("bob", chunks("bob", 3), window=2))

    order = []
    while broker:  # one worker: take the oldest task, run it, send what its finish releases
        owner, chunk = broker.popleft()
        order.append(chunk.id)
        broker.extend((owner, released) for released in fair.finish(owner, chunk.id, window=2))

    bob_done = order.index("bob-2") + 1
    assert bob_done <= 7  # alone, Bob's 3 chunks take 3 turns; behind Alice's 10 in one queue they took 13
    assert sorted(order) == sorted([f"alice-{n}" for n in range(10)] + [f"bob-{n}" for n in range(3)])
    assert fair.keys_waiting() == 0


def test_a_key_with_nothing_waiting_leaves_nothing_behind(fair: FairShare):
    fair.admit("alice", chunks("alice", 1), window=2)
    fair.finish("alice", "alice-0", window=2)

    redis = Redis.from_url(TEST_REDIS_URL)
    assert fair.keys_waiting() == 0
    assert list(redis.scan_iter("pneuradnet:fair:pending:*")) == []
    assert list(redis.scan_iter("pneuradnet:fair:in-flight:*")) == []


def test_a_chunk_whose_task_was_lost_stops_holding_its_keys_place(fair: FairShare):
    fair.admit("alice", chunks("alice", 3), window=1)
    redis = Redis.from_url(TEST_REDIS_URL)
    # alice-0 was released, but its sender died before the task reached the broker: it never finishes.
    redis.zadd(fair_in_flight_key("alice"), {"alice-0": time.time() - IN_FLIGHT_EXPIRY - 1})

    assert [chunk.id for chunk in fair.admit("alice", [], window=1)] == ["alice-1"]


def test_the_window_lets_one_key_keep_every_worker_busy():
    assert window_for(0) == 2 and window_for(1) == 2 and window_for(4) == 5
