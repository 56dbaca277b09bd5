"""The nemesis: one fault of FAULT_WEIGHTS at a time, at seeded random moments, against the fleet."""

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from bench.chaos.history import Fault
from bench.chaos.settings import (
    APIS,
    BROKER_SEND_FAILS,
    FAULT_WEIGHTS,
    MAX_FAULT_GAP,
    MEAN_FAULT_GAP,
    REDIS_DOWN_SECONDS,
    RESTART_AFTER,
    SEND_FAILS_SECONDS,
    SLEEP_SECONDS,
    WORKERS,
    seeded,
)

if TYPE_CHECKING:
    from bench.chaos.campaign import Campaign


class Nemesis(threading.Thread):
    """Injects one fault at a time at random moments (seeded); processes it kills are started again in threads of
    their own, so that faults overlap. It never takes down the last API or worker up."""

    def __init__(self, campaign: "Campaign") -> None:
        super().__init__(name="nemesis", daemon=True)
        self.campaign = campaign
        self.fleet = campaign.fleet
        self.faults: list[Fault] = []
        self.skipped: Counter[str] = Counter()
        self._helpers: list[threading.Thread] = []
        self._send_fails_until = 0.0
        self._lock = threading.Lock()

    def run(self) -> None:
        inject: dict[str, Callable[[random.Random, Fault], bool]] = {
            "kill-worker": self._kill_worker, "kill-api": self._kill_api, "restart-redis": self._restart_redis,
            "client-kill": self._client_kill, "slow-redis": self._slow_redis,
            "broker-send-fails": self._broker_send_fails}
        for number in itertools.count(1):
            rng = seeded(self.campaign.seed, "nemesis", number)
            if self.campaign.stopping.wait(min(rng.expovariate(1 / MEAN_FAULT_GAP), MAX_FAULT_GAP)):
                return
            kind = rng.choices(list(FAULT_WEIGHTS), weights=list(FAULT_WEIGHTS.values()))[0]
            fault = Fault(number, kind, "", self.campaign.clock(), time.time())
            try:
                injected = inject[kind](rng, fault)
            except Exception as error:  # a fault that could not be injected (Redis away): said, not fatal
                fault.detail = f"not injected: {type(error).__name__}: {error}"
                injected = False
            if injected:
                with self._lock:
                    self.faults.append(fault)
                self.campaign.say(f"fault {number}: {kind} {fault.target} {fault.detail}".rstrip())
            else:
                self.skipped[kind] += 1

    def join_all(self) -> None:
        """Once the run is stopping: wait until every process killed is back and every slow command or refusal is
        over."""
        self.join()
        for helper in list(self._helpers):
            helper.join()

    def _later(self, target: Callable[[], None]) -> None:
        helper = threading.Thread(target=target, daemon=True)
        self._helpers.append(helper)
        helper.start()

    def _kill_worker(self, rng: random.Random, fault: Fault) -> bool:
        live = self.fleet.live(self.fleet.workers)
        if len(live) < WORKERS:
            return False
        index = live[rng.randrange(len(live))]
        down_for = rng.uniform(*RESTART_AFTER)
        incarnation = self.fleet.kill_worker(index)
        fault.target = f"worker-{index}"
        fault.detail = f"(run {incarnation.number}, pid {incarnation.pid}), back in {down_for:.1f} s"
        self._later(lambda: self._restart(fault, down_for, lambda: self.fleet.start_worker(index)))
        return True

    def _kill_api(self, rng: random.Random, fault: Fault) -> bool:
        live = self.fleet.live(self.fleet.apis)
        if len(live) < APIS:
            return False
        index = live[rng.randrange(len(live))]
        down_for = rng.uniform(*RESTART_AFTER)
        self.fleet.kill_api(index)
        fault.target = f"api-{index}"
        fault.detail = f"back in {down_for:.1f} s"
        self._later(lambda: self._restart(fault, down_for, lambda: self.fleet.start_api(index)))
        return True

    def _restart(self, fault: Fault, down_for: float, start: Callable[[], None]) -> None:
        time.sleep(down_for)
        try:
            start()
        except Exception as error:  # the heal starts it again; the checker will see what it cost
            self.campaign.say(f"fault {fault.number}: {fault.target} did not start again: {error}")
            return
        fault.seconds = self.campaign.clock() - fault.at

    def _restart_redis(self, rng: random.Random, fault: Fault) -> bool:
        fault.target = "redis"
        fault.seconds = self.fleet.redis.restart(rng.uniform(*REDIS_DOWN_SECONDS))
        fault.detail = f"answered again after {fault.seconds:.1f} s"
        return True

    def _client_kill(self, _: random.Random, fault: Fault) -> bool:
        with self.fleet.redis.client() as redis:
            killed = redis.execute_command("CLIENT", "KILL", "TYPE", "normal")
        fault.target = "redis"
        fault.detail = f"{killed} connections dropped"
        return True

    def _slow_redis(self, rng: random.Random, fault: Fault) -> bool:
        seconds = round(rng.uniform(*SLEEP_SECONDS), 2)
        fault.target, fault.seconds, fault.detail = "redis", seconds, f"DEBUG SLEEP {seconds} s"

        def sleep() -> None:
            try:
                with self.fleet.redis.client(timeout=seconds + 30) as redis:
                    redis.execute_command("DEBUG", "SLEEP", seconds)
            except RedisError as error:
                self.campaign.say(f"fault {fault.number}: DEBUG SLEEP failed: {error}")

        self._later(sleep)
        return True

    def _broker_send_fails(self, rng: random.Random, fault: Fault) -> bool:
        seconds = rng.uniform(*SEND_FAILS_SECONDS)
        fault.target, fault.seconds, fault.detail = "broker", seconds, f"for {seconds:.1f} s"
        with self._lock:
            self._send_fails_until = max(self._send_fails_until, time.monotonic() + seconds)
            self.fleet.set_fault(BROKER_SEND_FAILS + "\n")

        def clear() -> None:
            time.sleep(seconds)
            with self._lock:
                if time.monotonic() >= self._send_fails_until:  # a later refusal still going on keeps the file
                    self.fleet.set_fault("")

        self._later(clear)
        return True
