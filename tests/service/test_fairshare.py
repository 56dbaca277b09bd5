"""Fair share of the bulk lane, driven through its Lua scripts on a real Redis, with a FIFO list standing in for
the broker's bulk queue."""

from collections import deque
from collections.abc import Iterator

import pytest
from redis import Redis

from service.fairshare import Chunk, FairShare, window_for
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
    assert [chunk.id for chunk in fair.finish("alice", "alice-0", run="run-a", window=2)] == ["alice-2"]
    assert fair.keys_waiting() == 1


def test_a_chunk_finished_by_a_second_run_of_its_task_releases_nothing_more(fair: FairShare):
    fair.admit("alice", chunks("alice", 4), window=1)

    first = fair.finish("alice", "alice-0", run="run-a", window=1)
    again = fair.finish("alice", "alice-0", run="run-b", window=1)  # the broker handed the task out twice

    assert first == [Chunk(id="alice-1", job_ids=["alice-job-1"])]
    assert again == []  # its successor is not sent a second time
    assert [chunk.id for chunk in fair.finish("alice", "alice-1", run="run-c", window=1)] == ["alice-2"]


def test_a_step_whose_answer_was_lost_answers_the_same_when_sent_again(fair: FairShare):
    from tests.lossy_proxy import lossy_proxy

    with lossy_proxy() as proxy:
        lossy = FairShare(f"{proxy.url}/{TEST_REDIS_URL.rsplit('/', 1)[1]}", ttl=600)
        proxy.lose_next_answer()
        admitted = lossy.admit("alice", chunks("alice", 4), window=1)
        proxy.lose_next_answer()
        finished = lossy.finish("alice", "alice-0", run="run-a", window=1)
        lossy.close()

    assert [chunk.id for chunk in admitted] == ["alice-0"]
    assert [chunk.id for chunk in finished] == ["alice-1"]  # sent again, it is not taken for a second run
    redis = Redis.from_url(TEST_REDIS_URL)
    assert redis.llen("pneuradnet:fair:pending:alice") == 2  # the four chunks were queued once, not twice
    assert redis.zrange("pneuradnet:fair:in-flight:alice", 0, -1) == [b"alice-1"]


def test_keys_with_work_waiting_take_turns_on_a_first_in_first_out_broker(fair: FairShare):
    broker: deque[tuple[str, Chunk]] = deque()
    broker.extend(("alice", chunk) for chunk in fair.admit("alice", chunks("alice", 10), window=2))
    broker.extend(("bob", chunk) for chunk in fair.admit("bob", chunks("bob", 3), window=2))

    order = []
    while broker:  # one worker: take the oldest task, run it, send what its finish releases
        owner, chunk = broker.popleft()
        order.append(chunk.id)
        broker.extend((owner, released) for released in fair.finish(owner, chunk.id, run=chunk.id, window=2))

    bob_done = order.index("bob-2") + 1
    assert bob_done <= 7  # alone, Bob's 3 chunks take 3 turns; behind Alice's 10 in one queue they took 13
    assert sorted(order) == sorted([f"alice-{n}" for n in range(10)] + [f"bob-{n}" for n in range(3)])
    assert fair.keys_waiting() == 0


def test_a_key_with_nothing_waiting_leaves_nothing_behind(fair: FairShare):
    fair.admit("alice", chunks("alice", 1), window=2)
    fair.finish("alice", "alice-0", run="run-a", window=2)

    redis = Redis.from_url(TEST_REDIS_URL)
    assert fair.keys_waiting() == 0
    assert list(redis.scan_iter("pneuradnet:fair:pending:*")) == []
    assert list(redis.scan_iter("pneuradnet:fair:in-flight:*")) == []
    assert list(redis.scan_iter("pneuradnet:fair:chunks:*")) == []


def test_chunks_whose_send_failed_go_back_first_in_line(fair: FairShare):
    released = fair.admit("alice", chunks("alice", 5), window=3)

    assert fair.put_back("alice", [chunk.id for chunk in released[1:]]) == 2  # alice-0 was sent, then the broker fell

    assert [flight.chunk.id for flight in fair.in_flight(["alice"])] == ["alice-0"]
    assert [chunk.id for chunk in fair.release("alice", window=3)] == ["alice-1", "alice-2"]


def test_a_chunk_put_back_as_lost_is_left_alone_if_it_was_released_again_since(fair: FairShare):
    fair.admit("alice", chunks("alice", 2), window=1)
    (flight,) = fair.in_flight(["alice"])

    assert fair.put_back("alice", ["alice-0"], released_before=flight.released_at) == 0
    assert fair.put_back("alice", ["alice-0"], released_before=flight.released_at + 0.001) == 1
    assert fair.in_flight(["alice"]) == []
    assert fair.pending_job_ids(["alice"]) == {"alice-job-0", "alice-job-1"}


def test_the_window_lets_one_key_keep_every_worker_busy():
    assert window_for(0) == 1 and window_for(1) == 1 and window_for(4) == 4
