"""The DICOM node end to end: a real node process, dcmtk's echoscu and storescu, a real worker, the real model."""

import io
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForProcessing,
    RLELossless,
    generate_uid,
)
from redis import Redis

from service.jobstore import JobStatus, JobStore
from tests.dicomnode.conftest import Node, batches, statuses
from tests.dicomnode.instances import (
    PATIENT,
    data_set_of,
    full_size_dx,
    grayscale,
    instance,
    radiograph_instance,
    write,
)
from tests.live_service import TEST_REDIS_URL
from tests.processes import stop, wait_until

StartNode = Callable[..., Node]

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700


def test_a_verification_request_is_answered(start_node: StartNode):
    node = start_node()

    answer = node.echo()

    assert answer.returncode == 0, answer.stderr


@pytest.mark.model
def test_a_study_sent_over_two_associations_is_one_batch_classified_as_over_http(
        start_node: StartNode, client: httpx.Client, store: JobStore, radiographs: list[Path], tmp_path: Path):
    node = start_node(DICOM_STUDY_TIMEOUT="3")
    study = generate_uid()
    chosen = [radiographs[0], radiographs[1], radiographs[-1], radiographs[-2]]  # two normal, two pneumonia
    classes = [ComputedRadiographyImageStorage, DigitalXRayImageStorageForProcessing] * 2
    datasets = [radiograph_instance(jpeg, study_uid=study, sop_class=sop_class)
                for jpeg, sop_class in zip(chosen, classes, strict=True)]
    files = [write(dataset, tmp_path / f"{n}.dcm") for n, dataset in enumerate(datasets)]

    first = node.store(*files[:2], calling="MODALITY1")
    time.sleep(1)  # within the study's quiet time
    second = node.store(*files[2:], calling="MODALITY1", options=("-R", "-xr"))

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert statuses(first) + statuses(second) == [SUCCESS] * 4
    (batch,) = batches(store)
    assert batch.total == 4 and batch.owner == "dicom:MODALITY1" and batch.growing  # open: its jobs started
    wait_until(lambda: store.get_batch(batch.id).done, timeout=120, what="the study's batch to close and finish")
    jobs = store.get_jobs(store.batch_job_ids(batch.id))
    assert [job.filename for job in jobs] == [f"{dataset.SOPInstanceUID}.dcm" for dataset in datasets]
    assert all(job.status is JobStatus.SUCCEEDED for job in jobs), [job.error for job in jobs]

    pngs = [("files", (f"{n}.png", _png(grayscale(jpeg)), "image/png")) for n, jpeg in enumerate(chosen)]
    uploaded = client.post("/jobs", files=pngs)
    over_http = [client.get(f"/jobs/{job['id']}", params={"wait": 30}).json() for job in uploaded.json()["jobs"]]
    for job, reference in zip(jobs, over_http, strict=True):
        assert reference["status"] == "succeeded"
        assert job.result["predicted_class"] == reference["result"]["predicted_class"]
        assert job.result["predictions"] == pytest.approx(reference["result"]["predictions"], abs=1e-5)
    assert [job.result["predicted_class"] for job in jobs] == ["NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA"]


def test_a_study_over_two_nodes_and_a_restart_is_one_batch(start_node: StartNode, store: JobStore,
                                                            radiographs: list[Path], tmp_path: Path):
    study = generate_uid()
    files = [write(radiograph_instance(radiographs[n], study_uid=study), tmp_path / f"{n}.dcm") for n in range(3)]
    first, second = start_node(DICOM_STUDY_TIMEOUT="6"), start_node(DICOM_STUDY_TIMEOUT="6")

    assert statuses(first.store(files[0])) == statuses(second.store(files[1])) == [SUCCESS]
    stop(first.process)  # a node restarts mid-study: what it acknowledged is in Redis
    assert statuses(start_node(DICOM_STUDY_TIMEOUT="6").store(files[2])) == [SUCCESS]

    (batch,) = batches(store)
    assert batch.total == 3 and batch.growing
    wait_until(lambda: not store.get_batch(batch.id).growing, timeout=30, what="the study to close")
    closed = store.get_batch(batch.id)
    assert closed.total == 3 and closed.interrupted == 0
    assert sorted(job.filename for job in store.get_jobs(store.batch_job_ids(batch.id))) == sorted(
        f"{dcmread(path, stop_before_pixels=True).SOPInstanceUID}.dcm" for path in files)


def test_a_peer_not_allowed_is_rejected_at_association(start_node: StartNode):
    node = start_node(DICOM_ALLOWED_PEERS="PACS1@127.0.0.1, MODALITY2@10.255.255.1")

    assert node.echo(calling="PACS1").returncode == 0
    for calling in ("OTHER", "MODALITY2"):  # an unknown AE title; a known one from another host
        refused = node.echo(calling=calling)
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stderr
    assert "association from OTHER@127.0.0.1 rejected" in node.log()


def test_an_unsupported_class_or_syntax_is_refused_in_its_presentation_context(
        start_node: StartNode, store: JobStore, tmp_path: Path):
    node = start_node()
    pixels = np.zeros((128, 128), np.uint8)
    ct = write(instance(pixels, study_uid=generate_uid(), sop_class=CTImageStorage), tmp_path / "ct.dcm")
    video = instance(pixels, study_uid=generate_uid())
    video.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2: never decoded here
    video.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(100)])
    video["PixelData"].VR = "OB"
    mpeg = write(video, tmp_path / "mpeg.dcm")

    sent_ct = node.store(ct)
    sent_mpeg = node.store(mpeg, options=("-R", "-xm"))  # that syntax alone

    assert "(Abstract Syntax Not Supported)" in sent_ct.stderr and "No presentation context for: (CT)" in sent_ct.stderr
    assert "(Transfer Syntaxes Not Supported)" in sent_mpeg.stderr
    assert statuses(sent_ct) == statuses(sent_mpeg) == []
    assert batches(store) == []


def test_a_full_queue_or_redis_answers_out_of_resources_and_keeps_nothing(
        start_node: StartNode, store: JobStore, tmp_path: Path, radiographs: list[Path]):
    image = write(radiograph_instance(radiographs[0], study_uid=generate_uid()), tmp_path / "a.dcm")
    holder, _ = store.open_batch(total=2)  # an upload being admitted holds the queue's two places
    queue_full = start_node(MAX_QUEUE="2")
    store_full = start_node(REDIS_BUDGET_BYTES="1000")

    for node in (queue_full, store_full):
        assert statuses(node.store(image)) == [OUT_OF_RESOURCES]
    assert [batch.total for batch in batches(store) if batch.id != holder.id] == [0]  # opened, and nothing kept
    assert store.queued_count() == 0 and not _keys("pneuradnet:job:*")
    assert "refused for now (out of resources)" in queue_full.log()

    store.close_admission(holder.id)  # room again: the sender's retry is stored
    assert statuses(queue_full.store(image)) == [SUCCESS]
    assert store.queued_count() == 1


def test_a_full_size_instance_of_many_pdus_is_stored_bit_identical(start_node: StartNode, store: JobStore,
                                                                     tmp_path: Path):
    node = start_node()
    large = write(full_size_dx(study_uid=generate_uid()), tmp_path / "large.dcm")  # 15 MB: 15 PDUs of 1 MiB

    assert statuses(node.store(large)) == [SUCCESS]

    (batch,) = batches(store)
    (job_id,) = store.batch_job_ids(batch.id)
    (stored,) = store.images([job_id])
    assert stored is not None and data_set_of(stored) == data_set_of(large.read_bytes())


def test_an_association_aborted_mid_instance_leaves_no_job(start_node: StartNode, store: JobStore, tmp_path: Path):
    received = tmp_path / "received"  # where the node writes instances as they arrive
    received.mkdir()
    node = start_node(TMPDIR=str(received))
    large = write(full_size_dx(study_uid=generate_uid(), rows=1500, columns=1200), tmp_path / "large.dcm")
    cutter = CuttingProxy(node.port, after_bytes=1_000_000)

    cut = node.store(large, port=cutter.port)

    assert cutter.cut and cut.returncode != 0
    assert statuses(cut) == []
    time.sleep(1)
    assert all(batch.total == 0 for batch in batches(store)) and store.queued_count() == 0
    assert not _keys("pneuradnet:job:*") and list(received.iterdir()) == []  # nor the part received
    assert statuses(node.store(large)) == [SUCCESS]  # the same instance, sent whole, is a job
    assert store.queued_count() + store.running_count() + len(_keys("pneuradnet:job:*")) > 0


@pytest.mark.model
def test_no_patient_data_reaches_redis_or_the_logs(start_node: StartNode, store: JobStore, client: httpx.Client,
                                                   radiographs: list[Path], tmp_path: Path):
    node = start_node(DICOM_STUDY_TIMEOUT="1")
    study = generate_uid()
    files = [write(radiograph_instance(radiographs[n], study_uid=study, syntax=RLELossless), tmp_path / f"{n}.dcm")
             for n in range(2)]

    assert statuses(node.store(*files, options=("-R", "-xr"))) == [SUCCESS] * 2
    wait_until(lambda: any(batch.done for batch in batches(store)), timeout=120, what="the study to finish")

    (batch,) = batches(store)
    answer = client.get(f"/batches/{batch.id}").text + client.get(f"/batches/{batch.id}", params={"format": "csv"}).text
    everything = _all_of_redis() + node.log() + answer
    assert study in everything  # UIDs are what files an instance
    for value in (*PATIENT.values(), "Doe", "Jane", "4711", "99887766"):
        assert value not in everything


def _keys(pattern: str) -> list[str]:
    redis = Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    found = [key for key in redis.scan_iter(pattern, count=1000) if ":worker" not in key]
    redis.close()
    return found


def _all_of_redis() -> str:
    """Every key and value of the test database, as text (bytes decoded with replacement)."""
    redis = Redis.from_url(TEST_REDIS_URL)
    parts = []
    read = {"string": redis.get, "hash": redis.hgetall, "list": lambda key: redis.lrange(key, 0, -1),
            "set": redis.smembers, "zset": lambda key: redis.zrange(key, 0, -1, withscores=True)}
    for key in redis.scan_iter(count=1000):
        parts.append(f"{key!r} {read[redis.type(key).decode()](key)!r}")
    redis.close()
    return "\n".join(parts)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class CuttingProxy:
    """A TCP proxy to the node that cuts the connection after `after_bytes` from the sender: the association dies
    mid-instance, as when a modality is switched off or its network fails."""

    def __init__(self, target_port: int, *, after_bytes: int) -> None:
        self._target_port = target_port
        self._after = after_bytes
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.cut = False
        threading.Thread(target=self._serve_one, daemon=True).start()

    def _serve_one(self) -> None:
        sender, _ = self._listener.accept()
        node = socket.create_connection(("127.0.0.1", self._target_port))
        threading.Thread(target=self._pipe, args=(node, sender, None), daemon=True).start()
        self._pipe(sender, node, self._after)
        self.cut = True
        for sock in (sender, node):
            sock.shutdown(socket.SHUT_RDWR)  # both ends see the connection end now
            sock.close()
        self._listener.close()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket, limit: int | None) -> None:
        passed = 0
        try:
            while limit is None or passed < limit:
                chunk = source.recv(65536)
                if not chunk:
                    return
                target.sendall(chunk)
                passed += len(chunk)
        except OSError:
            return

