"""The fleet, all on loopback: a redis-server with an append-only file, APIS APIs and WORKERS workers, each process
in a session of its own so that its whole group can be SIGKILLed; their environment, and the clock skew of
SKEWED_WORKER and SKEWED_API (a sitecustomize.py first on their PYTHONPATH)."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from bench.chaos.history import Incarnation
from bench.chaos.settings import (
    API_KEYS,
    APIS,
    CLOCK_SKEW,
    CLOCK_SKEW_ENV,
    JOB_TIMEOUT,
    MAX_BATCH,
    MAX_QUEUE,
    SKEWED_API,
    SKEWED_WORKER,
    SWEEP_INTERVAL,
    WEBHOOK_SECRET,
    WEBHOOK_TIMEOUT,
    WORKERS,
)
from tests.processes import ROOT, STARTUP_TIMEOUT, free_port, wait_for_api, wait_until

SITECUSTOMIZE = f'''"""Written by bench/chaos/fleet.py: this process's time.time() and time.time_ns() run
${CLOCK_SKEW_ENV} seconds off. C-level clocks (datetime.now, Redis' TIME, monotonic clocks) are not touched."""
import os
import time

_offset = float(os.environ.get("{CLOCK_SKEW_ENV}", "0"))
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _offset
time.time_ns = lambda: _time_ns() + int(_offset * 1_000_000_000)
'''


class RedisServer:
    """A redis-server with an append-only file in `folder`, restarted on the same file by the nemesis."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--appendonly", "yes",
             "--appendfsync", "everysec", "--save", "", "--dir", str(self.folder), "--enable-debug-command", "local",
             "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self.answers, timeout=30, what="redis-server to start")

    def restart(self, down_for: float) -> float:
        """SHUTDOWN (the append-only file gets what it lacked), wait `down_for` seconds, start again on the same file;
        seconds it did not answer."""
        started = time.monotonic()
        with self._once(timeout=30) as client:
            client.shutdown()
        if self.process is not None:
            self.process.wait(timeout=60)
        time.sleep(down_for)
        self.start()
        return time.monotonic() - started

    def answers(self) -> bool:
        try:
            with self._once(timeout=1) as client:
                return bool(client.ping())
        except RedisError:
            return False

    def _once(self, *, timeout: float) -> Redis:
        """A client that sends each command once: redis-py's retries (with backoff) would hide for seconds that the
        server has stopped."""
        return Redis(port=self.port, socket_timeout=timeout, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))

    def client(self, *, timeout: float = 10.0) -> Redis:
        return Redis(port=self.port, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Slot:
    """One API or worker of the fleet: its current process, if any."""

    index: int
    env: dict[str, str]
    process: subprocess.Popen | None = None
    down: bool = True
    """Not started yet, killed, or being started again: the nemesis leaves it alone."""


class Fleet:
    """The service's processes: Redis, APIS APIs on ports of their own, WORKERS workers, one log per process run."""

    def __init__(self, folder: Path, *, receiver_port: int, clock: Callable[[], float]) -> None:
        self.folder = folder
        self.clock = clock
        self.redis = RedisServer(folder)
        self.fault_file = folder / "faults"
        self.fault_file.write_text("")
        env = service_env(self.redis.url, receiver_port, self.fault_file)
        skew_dir = folder / "skewed-clock"
        skew_dir.mkdir(exist_ok=True)
        (skew_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.api_ports = [free_port() for _ in range(APIS)]
        self.apis = [Slot(n, skewed(env, skew_dir, CLOCK_SKEW[1]) if n == SKEWED_API else env) for n in range(APIS)]
        self.workers = [Slot(n, skewed(env, skew_dir, CLOCK_SKEW[0]) if n == SKEWED_WORKER else env)
                        for n in range(WORKERS)]
        self.incarnations: list[Incarnation] = []
        self._lock = threading.Lock()

    @property
    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.api_ports]

    def start(self) -> None:
        self.redis.start()
        starters = [threading.Thread(target=self.start_api, args=(n,)) for n in range(APIS)]
        starters += [threading.Thread(target=self.start_worker, args=(n,)) for n in range(WORKERS)]
        for starter in starters:
            starter.start()
        for starter in starters:
            starter.join()
        if any(slot.down for slot in (*self.apis, *self.workers)):
            raise RuntimeError(f"the fleet did not start: see the logs in {self.folder}")

    def start_worker(self, index: int) -> None:
        """Start worker `index` (a log of its own for this run) and return once its model process is ready."""
        slot = self.workers[index]
        with self._lock:
            number = sum(incarnation.worker == index for incarnation in self.incarnations) + 1
            incarnation = Incarnation(index, number, self.folder / f"worker-{index}-{number:02d}.log", self.clock())
            self.incarnations.append(incarnation)
        command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--loglevel", "INFO",
                   "--without-heartbeat", "--without-gossip", "--without-mingle", "-n", f"chaos-{index}@%h"]
        with incarnation.log.open("ab") as log:
            slot.process = subprocess.Popen(command, cwd=ROOT, env=slot.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        incarnation.pid = slot.process.pid
        process = slot.process
        wait_until(lambda: "loaded from" in incarnation.log.read_text() or process.poll() is not None,
                   timeout=STARTUP_TIMEOUT, what=f"worker {index} to load its model")
        if process.poll() is not None:
            raise RuntimeError(f"worker {index} exited with {process.returncode}: see {incarnation.log}")
        slot.down = False

    def start_api(self, index: int) -> None:
        slot = self.apis[index]
        log_path = self.folder / f"api-{index}.log"
        with log_path.open("ab") as log:
            slot.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port",
                 str(self.api_ports[index])],
                cwd=ROOT, env=slot.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_api(slot.process, self.api_urls[index], log_path)
        slot.down = False

    def kill_worker(self, index: int) -> Incarnation:
        """SIGKILL the worker's process group (parent and model process at once); the run it was."""
        slot = self.workers[index]
        slot.down = True
        _kill_group(slot.process)
        incarnation = next(i for i in reversed(self.incarnations) if i.worker == index)
        incarnation.killed_at = self.clock()
        return incarnation

    def kill_api(self, index: int) -> None:
        self.apis[index].down = True
        _kill_group(self.apis[index].process)

    def live(self, slots: list[Slot]) -> list[int]:
        return [slot.index for slot in slots if not slot.down]

    def ensure_up(self) -> None:
        """Start again whatever is not running, or never became ready (a process that died by itself, a restart
        that failed): once the nemesis has stopped, a slot still down is one of those."""
        if not self.redis.answers():
            self.redis.start()
        for slots, start in ((self.apis, self.start_api), (self.workers, self.start_worker)):
            for slot in slots:
                if slot.down or slot.process is None or slot.process.poll() is not None:
                    _kill_group(slot.process)
                    start(slot.index)

    def set_fault(self, text: str) -> None:
        self.fault_file.write_text(text)

    def close(self) -> None:
        """Stop everything at once: the campaign is over, nothing it runs has anything to keep."""
        for slot in (*self.workers, *self.apis):
            slot.down = True
            _kill_group(slot.process)
        self.redis.kill()


def service_env(redis_url: str, receiver_port: int, fault_file: Path) -> dict[str, str]:
    """The environment of every API and worker: this one's, without fault points, with the campaign's settings."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PNEURADNET_FAULT")}
    return env | {
        "REDIS_URL": redis_url, "JOB_TIMEOUT": str(JOB_TIMEOUT), "SWEEP_INTERVAL": str(SWEEP_INTERVAL),
        "MAX_QUEUE": str(MAX_QUEUE), "MAX_BATCH": str(MAX_BATCH), "API_KEYS": ",".join(API_KEYS),
        "WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{receiver_port}", "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "WEBHOOK_TIMEOUT": str(WEBHOOK_TIMEOUT), "WORKER_CONCURRENCY": "1", "WORKER_THREADS": "1",
        "INFERENCE_RUNTIME": "onnxruntime", "LOG_FORMAT": "json", "PNEURADNET_FAULT_FILE": str(fault_file),
        "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
    }


def skewed(env: dict[str, str], skew_dir: Path, seconds: float) -> dict[str, str]:
    """The environment of a process whose time.time() runs `seconds` off (the sitecustomize.py in `skew_dir`)."""
    path = os.pathsep.join(part for part in (str(skew_dir), env.get("PYTHONPATH", "")) if part)
    return env | {"PYTHONPATH": path, CLOCK_SKEW_ENV: str(seconds)}


def _kill_group(process: subprocess.Popen | None) -> None:
    """SIGKILL a process started in a session of its own, and everything in its group."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
