"""Which S3 client the service uses, measured: `.venv/bin/python -m bench.objectstore` (needs the bench extra for
boto3) starts a SeaweedFS on loopback, then times obstore (the service's client, service/imagestore.py) and boto3
writing and reading the package's real radiographs: one at a time (median wall time per object), a chunk of 16 in
parallel as a worker reads one (median per chunk), and the CPU time each spends per object, which a worker's model
would otherwise have. Prints a table and writes it as JSON (bench/results/objectstore.json).
"""

import argparse
import importlib.metadata
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import botocore.config

from bench.compute import cpu_model
from bench.drills import _instruction_set
from bench.run import RADIOGRAPHS, _format, _machine
from service.imagestore import PARALLEL_REQUESTS, ObjectLocation, ObjectStore
from tests.objectstore import ACCESS_KEY, REGION, SECRET_KEY, SeaweedFS
from tests.processes import ROOT

BUCKET = "bench"
CHUNK = 16
"""Images a worker reads for one task (MAX_BATCH)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=160, help="objects written and read by each client")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "objectstore.json")
    args = parser.parse_args()
    folder = Path(str(importlib.metadata.distribution("pneumonia-model-package").locate_file(RADIOGRAPHS)))
    images = [path.read_bytes() for path in sorted(folder.glob("*.jpeg"))]
    payloads = [images[n % len(images)] for n in range(args.objects)]

    server = SeaweedFS(Path(tempfile.mkdtemp(prefix="pneuradnet-objectstore-")))
    server.start()
    os.environ.update(server.env)  # obstore reads the AWS variables, as the service's processes do
    try:
        results = {"obstore": _obstore(server, payloads), "boto3": _boto3(server, payloads)}
    finally:
        server.stop()
    report = {"machine": {**_machine(), "cpu_model": cpu_model(), "instruction_set": _instruction_set()},
              "object_kb_mean": round(statistics.mean(map(len, payloads)) / 1024), "clients": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    rows = [("client", "PUT ms", "GET ms", f"{CHUNK} GETs in parallel ms", "CPU ms per GET")]
    for name, figures in results.items():
        rows.append((name, f"{figures['put_ms']:.1f}", f"{figures['get_ms']:.1f}",
                     f"{figures['parallel_chunk_ms']:.1f}", f"{figures['cpu_ms_per_get']:.2f}"))
    print("\n".join(_format(rows)))
    print(f"\n{report['object_kb_mean']} KB objects; {report['machine']['cpu_model']}, "
          f"{report['machine']['instruction_set']}; written to {args.out}")


def _obstore(server: SeaweedFS, payloads: list[bytes]) -> dict[str, float]:
    store = ObjectStore(endpoint=server.endpoint)
    folder = ObjectLocation(BUCKET, f"obstore-{uuid.uuid4().hex}/")
    locations = [folder.child(str(n)) for n in range(len(payloads))]
    try:
        return _measure(put=lambda n: store.put_many([(locations[n], payloads[n])]),
                        get=lambda n: store.get_many([locations[n]]),
                        chunk=lambda start: store.get_many(locations[start:start + CHUNK]), count=len(payloads))
    finally:
        store.close()


def _boto3(server: SeaweedFS, payloads: list[bytes]) -> dict[str, float]:
    client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, region_name=REGION,
                          config=botocore.config.Config(s3={"addressing_style": "path"},
                                                        max_pool_connections=PARALLEL_REQUESTS))
    prefix = f"boto3-{uuid.uuid4().hex}/"
    pool = ThreadPoolExecutor(PARALLEL_REQUESTS)

    def get(n: int) -> bytes:
        return client.get_object(Bucket=BUCKET, Key=f"{prefix}{n}")["Body"].read()

    try:
        return _measure(put=lambda n: client.put_object(Bucket=BUCKET, Key=f"{prefix}{n}", Body=payloads[n]),
                        get=get, chunk=lambda start: list(pool.map(get, range(start, start + CHUNK))),
                        count=len(payloads))
    finally:
        pool.shutdown()


def _measure(*, put: Callable[[int], object], get: Callable[[int], object], chunk: Callable[[int], object],
             count: int) -> dict[str, float]:
    puts = [_timed(put, n) for n in range(count)]
    gets = [_timed(get, n) for n in range(count)]
    cpu_started = time.process_time()
    for n in range(count):
        get(n)
    cpu_per_get = (time.process_time() - cpu_started) / count
    chunks = [_timed(chunk, start) for start in range(0, count - CHUNK + 1, CHUNK)]
    return {"put_ms": statistics.median(puts) * 1000, "get_ms": statistics.median(gets) * 1000,
            "parallel_chunk_ms": statistics.median(chunks) * 1000, "cpu_ms_per_get": cpu_per_get * 1000}


def _timed(call: Callable[[int], object], argument: int) -> float:
    started = time.perf_counter()
    call(argument)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
