"""The DICOM node as a real process (python -m dicomnode) on a free port, against the test Redis; dcmtk's tools to
talk to it."""

import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis

from service.jobstore import Batch, JobStore
from service.keys import PREFIX
from tests.live_service import TEST_REDIS_URL, service_env, wipe_jobs
from tests.processes import ROOT, free_port, stop, wait_until

ECHOSCU = "/usr/bin/echoscu"
STORESCU = "/usr/bin/storescu"
"""Debian's dcmtk, by absolute path: pynetdicom installs Python tools of the same names into the venv."""

NODE_AE_TITLE = "PNEURADNET"

_STATUS = re.compile(r"DIMSE Status\s*: 0x([0-9a-f]{4})")


def statuses(storescu: subprocess.CompletedProcess) -> list[int]:
    """The status of every C-STORE response storescu received (its debug output), in order."""
    return [int(status, 16) for status in _STATUS.findall(storescu.stderr)]


@dataclass
class Node:
    process: subprocess.Popen
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def echo(self, *, calling: str = "MODALITY1") -> subprocess.CompletedProcess:
        return subprocess.run([ECHOSCU, "-aet", calling, "-aec", NODE_AE_TITLE, "127.0.0.1", str(self.port)],
                              capture_output=True, text=True, timeout=30)

    def store(self, *files: Path, calling: str = "MODALITY1", port: int | None = None,
              options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """storescu of these files in one association, debug output (each context's result, each response's
        status). `options`: storescu's own, e.g. ("-R", "-xr") to propose RLE only."""
        return subprocess.run([STORESCU, "-d", *options, "-aet", calling, "-aec", NODE_AE_TITLE, "127.0.0.1",
                               str(port or self.port), *map(str, files)], capture_output=True, text=True,
                              timeout=120)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def start_node(tmp_path: Path, broker_clean: None) -> Iterator[Callable[..., Node]]:
    """Start a node with these environment variables (DICOM_STUDY_TIMEOUT 2 s unless given); stopped after the
    test, and the job store wiped before and after."""
    wipe_jobs()
    started: list[Node] = []

    def start(**env: str) -> Node:
        port = free_port()
        log_path = tmp_path / f"node-{port}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "dicomnode"], cwd=ROOT, stdout=log,
                                       stderr=subprocess.STDOUT,
                                       env=service_env(**{"DICOM_PORT": str(port), "DICOM_STUDY_TIMEOUT": "2",
                                                          "PYTHONPATH": ".", **env}))
        node = Node(process, port, log_path)
        started.append(node)
        wait_until(lambda: _accepts(port) or process.poll() is not None, timeout=60, what="the node to listen")
        if process.poll() is not None:
            raise RuntimeError(f"the node exited with {process.returncode}:\n{node.log()[-3000:]}")
        return node

    yield start
    for node in started:
        stop(node.process)
    wipe_jobs()


def batches(store: JobStore) -> list[Batch]:
    """Every batch in the test job store."""
    redis = Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    ids = [key.split(":")[-1] for key in redis.scan_iter(f"{PREFIX}:batch:*", count=1000) if key.count(":") == 2]
    redis.close()
    return [batch for batch in map(store.get_batch, ids) if batch is not None]
