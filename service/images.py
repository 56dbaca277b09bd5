"""Where each job's image waits, and its life: kept in Redis (IMAGE_STORE=redis) or written to an object store
(IMAGE_STORE=s3://bucket/prefix), or already in one, named by the client (IMAGE_SOURCES); read a chunk at a time by
the workers; deleted once its job is done, if the service wrote it.

An image the service writes to the object store is noted in Redis (`images:owned`) before it is written, due for
deletion JOB_TTL later; its job's transition makes it due at once when the job finishes. The worker that finished
the job deletes it then; the reconciler deletes whatever is due and still there (a worker that died, an API that
died between writing an image and storing its job, a job that expired). Nothing the service did not write is ever
deleted: an image submitted by reference is not noted.
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from service.imagestore import ObjectLocation, ObjectStore
from service.jobstore import Job, JobStore, Upload
from service.settings import Settings

DELETE_AT_ONCE = 1000
"""Objects deleted in one sweep's request (S3's DeleteObjects takes at most 1000)."""


def images_for(settings: Settings, store: JobStore) -> "JobImages":
    """The job images of a process run with these settings: with an object store if images are written to one
    (IMAGE_STORE) or may be named in one (IMAGE_SOURCES)."""
    uses_objects = settings.image_bucket is not None or bool(settings.image_source_list)
    return JobImages(store, ObjectStore(endpoint=settings.aws_endpoint_url) if uses_objects else None,
                     settings.image_bucket)


class JobImages:
    """The images of the jobs in `store`; `objects` reaches the object store (None: Redis only), `bucket` is the
    folder uploads are written to (None: they stay in Redis)."""

    def __init__(self, store: JobStore, objects: ObjectStore | None, bucket: ObjectLocation | None) -> None:
        if bucket is not None and objects is None:
            raise ValueError("images written to a bucket need an object store to reach it")
        self._store = store
        self._objects = objects
        self._bucket = bucket

    def close(self) -> None:
        if self._objects is not None:
            self._objects.close()

    @property
    def objects(self) -> ObjectStore | None:
        """The object store, if this process reaches one (submissions by reference list through it)."""
        return self._objects

    @property
    def in_redis(self) -> bool:
        """Uploaded images are kept in Redis (their bytes count against Redis' budget)."""
        return self._bucket is None

    def keep(self, batch_id: str, first: int, uploads: Sequence[Upload]) -> list[Upload]:
        """Write a chunk of a batch's uploads to the object store, if that is where they wait (`first`: the place of
        the first in the batch, which names its object); the uploads as the job store is to record them. An image
        named by reference is already where it waits."""
        if self._bucket is None or self._objects is None:
            return list(uploads)
        kept = [replace(upload, data=b"", location=str(self._bucket.child(f"{batch_id}/{first + n:06d}")), owned=True)
                if upload.error is None and not upload.location else upload for n, upload in enumerate(uploads)]
        written = [(ObjectLocation.parse(kept_upload.location), upload.data)
                   for kept_upload, upload in zip(kept, uploads, strict=True) if kept_upload.owned]
        self._store.note_owned_images([str(location) for location, _ in written])
        self._objects.put_many(written)
        return kept

    def keep_file(self, batch_id: str, place: int, job_id: str, filename: str, path: Path) -> Upload:
        """Write the image in the file at `path` where it waits, as `keep` does, for job `job_id` of the batch (its
        `place` names its object): into Redis in one SET streamed from the file (JobStore.write_image_file), or to
        the object store; the upload as the job store is to record it."""
        if self._bucket is None or self._objects is None:
            with path.open("rb") as file:
                written = self._store.write_image_file(job_id, file, size=os.fstat(file.fileno()).st_size)
            return Upload(filename, b"", written=written)
        (kept,) = self.keep(batch_id, place, [Upload(filename, path.read_bytes())])
        return kept

    def forget_file(self, job_id: str, kept: Upload) -> None:
        """Delete what keep_file wrote into Redis for a job that will not be stored (an object it wrote is made due
        for deletion, as for any upload whose job was not stored)."""
        if kept.written:
            self._store.forget_image(job_id)
        self._store.owned_images_now_due([kept.location] if kept.owned else [])

    def read(self, jobs: Sequence[Job]) -> list[bytes | Callable[[], bytes] | None]:
        """Each job's image, in order: its bytes, read from Redis in one round trip; or, for an object, a callable
        that waits for its bytes, read in parallel and as they arrive (it raises ObjectUnreadable, or
        ObjectStoreUnavailable); or None if the image is no longer in Redis (expired)."""
        in_redis = [job for job in jobs if not job.image]
        from_redis = dict(zip((job.id for job in in_redis), self._store.images([job.id for job in in_redis]),
                              strict=True))
        in_objects = [job for job in jobs if job.image]
        from_objects: dict[str, Callable[[], bytes]] = {}
        if in_objects:
            if self._objects is None:
                raise ValueError("jobs name images in an object store, and this process has none configured")
            readings = self._objects.get_each([ObjectLocation.parse(job.image) for job in in_objects])
            from_objects = {job.id: reading.result for job, reading in zip(in_objects, readings, strict=True)}
        return [from_objects[job.id] if job.image else from_redis[job.id] for job in jobs]

    def discard(self, jobs: Sequence[Job]) -> None:
        """Delete the images the service wrote for these jobs, now finished. If that fails, the reconciler will."""
        owned = [job.image for job in jobs if job.image_owned]
        if owned and self._objects is not None:
            self._objects.delete_many([ObjectLocation.parse(location) for location in owned])
            self._store.forget_owned_images(owned)

    def discard_due(self) -> int:
        """Delete every image the service wrote whose job finished or expired (the reconciler's sweep); how many."""
        if self._objects is None:
            return 0
        deleted = 0
        while due := self._store.owned_images_due(limit=DELETE_AT_ONCE):
            self._objects.delete_many([ObjectLocation.parse(location) for location in due])
            self._store.forget_owned_images(due)
            deleted += len(due)
            if len(due) < DELETE_AT_ONCE:
                break
        return deleted
