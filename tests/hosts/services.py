"""The service's processes on other hosts: a worker or an API inside a network namespace (or on the host), and a
Redis of the test's own on the host, reachable from the namespaces through their veth pairs."""

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from redis import Redis

from tests.hosts.network import Namespace
from tests.processes import ROOT, STARTUP_TIMEOUT, free_port, wait_for_api, wait_until


class RedisServer:
    """A redis-server of the test's own: no persistence, in a folder of its own, listening on loopback and on the
    host side of the given namespaces' veth pairs, so that the machine's shared Redis is never touched."""

    def __init__(self, folder: Path, namespaces: Sequence[Namespace]) -> None:
        self.port = free_port()
        addresses = ["127.0.0.1", *(namespace.host_address for namespace in namespaces)]
        with (folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                # Protected mode refuses clients that are not on loopback: the namespaces' are not, and only they
                # reach the veth addresses.
                ["redis-server", "--bind", *addresses, "--port", str(self.port), "--protected-mode", "no",
                 "--save", "", "--appendonly", "no", "--dir", str(folder)], stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._answers, timeout=10, what="redis-server to start")

    def url(self, namespace: Namespace | None = None) -> str:
        """The URL a process inside `namespace` (or on the host: None) reaches this Redis at."""
        host = namespace.host_address if namespace else "127.0.0.1"
        return f"redis://{host}:{self.port}/0"

    def client(self) -> Redis:
        return Redis.from_url(self.url(), decode_responses=True)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        try:
            return Redis(port=self.port, socket_connect_timeout=0.5).ping()
        except Exception:
            return False


def service_env(redis_url: str, settings: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "TF_CPP_MIN_LOG_LEVEL": "2", "JOB_TTL": "3600",
            "PYTHONUNBUFFERED": "1", **settings}


def inside(namespace: Namespace | None, command: list[str]) -> list[str]:
    return namespace.command(*command) if namespace else command


class Processes:
    """The service's processes a test starts, inside namespaces or on the host; `stop_all` ends every one left,
    with its children (each runs in a session of its own), whatever the test's outcome."""

    def __init__(self, logs: Path) -> None:
        self._logs = logs
        self._started: list[subprocess.Popen] = []

    def start_workers(self, env: Callable[[Namespace | None], dict[str, str]],
                      *where: Namespace | None) -> list[subprocess.Popen]:
        """A worker (prefork pool) in each place (a namespace, or None: the host), as tests/processes.py starts one;
        `env(place)` is its environment. They load the model at once; returns when each model process has."""
        command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--loglevel", "INFO",
                   "--without-heartbeat", "--without-gossip", "--without-mingle"]
        logs = [self._log(f"worker-{namespace.name if namespace else 'host'}") for namespace in where]
        workers = [self._spawn(inside(namespace, [*command, "-n", f"hosts-{uuid.uuid4().hex[:8]}@%h"]), log,
                               env(namespace)) for namespace, log in zip(where, logs, strict=True)]
        for worker, log in zip(workers, logs, strict=True):
            wait_until(lambda w=worker, p=log: "loaded from" in p.read_text() or w.poll() is not None,
                       timeout=STARTUP_TIMEOUT, what="a worker to load its model")
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}:\n{log.read_text()[-3000:]}")
        return workers

    def start_api(self, env: dict[str, str], namespace: Namespace) -> tuple[subprocess.Popen, str]:
        """An API process inside `namespace`, bound to the namespace's own address; returns it and its URL once it
        answers /healthz there."""
        port = 8000  # the namespace has ports of its own: nothing else listens there
        log = self._log(f"api-{namespace.name}")
        api = self._spawn(namespace.command(sys.executable, "-m", "uvicorn", "api.main:app", "--host",
                                            namespace.address, "--port", str(port)), log, env)
        url = f"http://{namespace.address}:{port}"
        wait_for_api(api, url, log)
        return api, url

    def stop(self, process: subprocess.Popen, *, grace: float = 30) -> None:
        """SIGTERM (a worker finishes its task), then SIGKILL to the process and its children after `grace` s."""
        if process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # pool processes the parent left behind
        process.wait()

    def worker_logs(self) -> list[Path]:
        """The log of every worker started so far."""
        return sorted(self._logs.glob("worker-*.log"))

    def stop_all(self) -> None:
        for process in self._started:
            self.stop(process, grace=10)

    def _log(self, name: str) -> Path:
        return self._logs / f"{name}.log"

    def _spawn(self, command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
        with log_path.open("ab") as log:
            # A session of its own, so that the process can be killed with all its children at once.
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self._started.append(process)
        return process
