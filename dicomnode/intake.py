"""Turning one received instance into a job of its study's batch, and the C-STORE status that says how it went.

An instance is acknowledged (0x0000) only once its job is stored: its image written where images wait (Redis, or
the object store: service/images.py, as the API writes uploads) and its record queued. Whatever stops that (the
queue or Redis' byte budget full, Redis or the object store not answering) answers 0xA700, out of resources, and
leaves nothing behind, so that the sender sends it again later.

Privacy: of the header, only the study's, series' and instance's UIDs are read here (pneuradnet/dicomidentity.py);
the job is named `<SOPInstanceUID>.dcm`, and logs carry UIDs only. The file itself travels as received, to the
worker. When reports are asked, the patient and study modules of a study's first instance are kept beside its batch
for the report (service/channels.py, as STOW-RS keeps them), never in a record or a log.
"""

import logging
import threading
import uuid
from pathlib import Path

import pydicom
from celery import Celery
from redis.exceptions import RedisError

from dicomnode.gatherer import ChunkGatherer
from pneuradnet.dicomidentity import DicomIdentity, UnreadableHeader, read_identity
from service.channels import Reports, reports_asked
from service.dispatch import enqueue_bulk
from service.fairshare import FairShare, window_for
from service.images import JobImages
from service.imagestore import ObjectStoreUnavailable
from service.jobstore import AdmissionClosed, JobStore, QueueFull, StoreFull
from service.logs import job_event
from service.studies import StudyGroups
from service.workers import WorkerRegistry

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
"""Refused for now: the sender keeps the instance and sends it again later."""
CANNOT_UNDERSTAND = 0xC000
"""Refused for good: the data set lacks what the node needs to file it (its UIDs, its transfer syntax)."""

OWNER_PREFIX = "dicom:"
"""A node's batches are owned by `dicom:<calling AE title>`: each modality or PACS has its own fair share."""

STORING_AT_ONCE = 2
"""Instances written to the image store at once, whatever the number of associations. Into Redis, an instance goes
in one SET read from its file a megabyte at a time; to an object store, whole (its bytes, and the client's copy:
30 MB for a 15 MB DX), so the others wait in their temporary files meanwhile."""

ATTEMPTS = 2
"""Batches an instance may try: its study's may close under it once (the reconciler took it for stalled), and the
next instance opens another."""


class Intake:
    def __init__(self, *, store: JobStore, images: JobImages, studies: StudyGroups, fair_share: FairShare,
                 workers: WorkerRegistry, celery: Celery, max_queue: int, max_batch: int, results_to: str = "",
                 results_stow_url: str = "", explain: bool = False) -> None:
        """`results_to`, `results_stow_url`: where a study's report goes (DICOM_RESULTS_TO, DICOM_RESULTS_STOW_URL;
        '' nowhere); `explain`: with heatmap captures (DICOM_EXPLAIN)."""
        self._results_to = results_to
        self._results_stow_url = results_stow_url
        self._explain = explain
        self._store = store
        self._images = images
        self._studies = studies
        self._fair_share = fair_share
        self._workers = workers
        self._celery = celery
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._chunks = ChunkGatherer(self._dispatch, max_batch=max_batch)
        self._storing = threading.BoundedSemaphore(STORING_AT_ONCE)

    def close(self) -> None:
        """Send the jobs still gathered (see dicomnode/gatherer.py)."""
        self._chunks.close()

    def receive(self, path: Path, *, calling_ae_title: str) -> int:
        """Store the instance received in the file at `path` as a job; the C-STORE status to answer."""
        try:
            with path.open("rb") as file:
                instance = read_identity(file)
        except UnreadableHeader as error:
            log.warning("an instance from %s was refused: %s", calling_ae_title, error)
            return CANNOT_UNDERSTAND
        owner = OWNER_PREFIX + calling_ae_title.strip()
        try:
            with self._storing:
                job_id, batch_id = self._store_job(instance, path, owner=owner)
        except (QueueFull, StoreFull, AdmissionClosed, ObjectStoreUnavailable, RedisError) as error:
            log.warning("instance %s of study %s from %s refused for now (out of resources): %s",
                        instance.sop_instance_uid, instance.study_uid, calling_ae_title, error)
            return OUT_OF_RESOURCES
        job_event(log, "received", job_id, batch_id=batch_id, status="queued")
        log.info("instance %s of series %s of study %s from %s is job %s of batch %s", instance.sop_instance_uid,
                 instance.series_uid, instance.study_uid, calling_ae_title, job_id, batch_id)
        self._chunks.add(owner, job_id)
        return SUCCESS

    def _store_job(self, instance: DicomIdentity, path: Path, *, owner: str) -> tuple[str, str]:
        """Reserve the job's place in its study's batch, write its image, store its record: (job id, batch id)."""
        image_bytes = path.stat().st_size if self._images.in_redis else 0
        for attempt in range(ATTEMPTS):
            batch_id = self._studies.batch_of(instance.study_uid, owner=owner, reports=lambda: self._reports(path),
                                              explain=self._explain)
            job_id = str(uuid.uuid4())
            try:
                place = self._studies.grow(instance.study_uid, batch_id, job_id=job_id, image_bytes=image_bytes,
                                           max_queue=self._max_queue)
            except AdmissionClosed:
                self._studies.forget(instance.study_uid, batch_id)
                if attempt + 1 == ATTEMPTS:
                    raise
                continue
            return self._write(batch_id, place, job_id, f"{instance.sop_instance_uid}.dcm", path,
                               image_bytes=image_bytes), batch_id
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _reports(self, path: Path) -> Reports | None:
        """What the batch of the study this instance opens asks: its report, to DICOM_RESULTS_TO and or
        DICOM_RESULTS_STOW_URL, filed with this instance's patient and study modules; None when reports go nowhere."""
        if not (self._results_to or self._results_stow_url):
            return None
        return reports_asked(pydicom.dcmread(path, stop_before_pixels=True), dicom_to=self._results_to,
                             stow_url=self._results_stow_url)

    def _write(self, batch_id: str, place: int, job_id: str, filename: str, path: Path, *, image_bytes: int) -> str:
        try:
            kept = self._images.keep_file(batch_id, place, job_id, filename, path)
        except BaseException:
            self._store.forget_image(job_id)  # what was written of it, if anything
            self._store.shrink_batch(batch_id, job_id=job_id, image_bytes=image_bytes)
            raise
        try:
            batch = self._store.get_batch(batch_id)
            if batch is None:
                raise AdmissionClosed(f"batch {batch_id} expired while its instance was being written")
            self._store.add_jobs(batch, [kept], stored_before=-1, job_ids=[job_id])
        except AdmissionClosed:  # its admission was closed meanwhile, and counts this job as never admitted
            self._images.forget_file(job_id, kept)
            raise
        except BaseException:
            self._store.shrink_batch(batch_id, job_id=job_id, image_bytes=image_bytes)
            self._images.forget_file(job_id, kept)
            raise
        return job_id

    def _dispatch(self, owner: str, job_ids: list[str]) -> None:
        """Hand stored jobs to their owner's fair share. If the broker does not take them, they stay queued in the
        job store, and the reconciler dispatches them again (jobs queued with no task): the instances are safe."""
        try:
            enqueue_bulk(job_ids, owner=owner, fair_share=self._fair_share, window=window_for(self._workers.count()),
                         chunk_size=self._max_batch, app=self._celery)
        except Exception as error:
            log.warning("%d stored jobs were not enqueued (%s): the reconciler will dispatch them", len(job_ids),
                        error)
