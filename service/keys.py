"""Every Redis key and channel name of the service, and the lifetimes that are not settings. Deployed APIs and
workers of different versions share one Redis, so these names are an interface (tests/service/test_keys.py pins
them).

Layout (all under the `pneuradnet:` prefix; job and batch keys expire JOB_TTL after submission):
- `job:{id}`            hash: the job record (service.jobstore.Job)
- `job:{id}:image`      string: the uploaded bytes, deleted as soon as the job finishes (IMAGE_STORE=redis; in an
                        object store, the job's `image` field names where they are)
- `job:{id}:heatmap`    string: the Grad-CAM heatmap over the image as PNG, for a job submitted with explain;
                        stored before the job succeeds, expiring with the job record
- `job:{id}:events`     pub/sub channel: the new status on every transition (long-polls listen here)
- `batch:{id}`          hash: created_at, total, owner, and the number of its jobs in each status
- `batch:{id}:events`   pub/sub channel: the new status of each of its jobs that finishes (batch long-polls)
- `batch:{id}:jobs`     list: the batch's job ids in upload order
- `registry:queued`     sorted set: the bulk lane's queued job ids scored by when they were queued, on Redis' clock
                        (queue depth, backpressure)
- `registry:running`    sorted set: running job ids scored by the end of their lease, on Redis' clock
- `idempotency:{owner}:{key}`  string: JSON {batch_id, fingerprint, state} of a submission with an Idempotency-Key;
                        state `admitting` until every job of it is stored, then `admitted`
- `metrics`             hash: cluster-wide counters and histogram buckets (service/metrics.py), no expiry
- `registry:queued:interactive`  sorted set: the same, for jobs of the interactive lane
- `worker:{name}`       hash: a live model process and the model it serves (service/workers.py), expiring
                        WORKER_TTL after its last heartbeat
- `workers`             sorted set: model process names scored by their last heartbeat, on Redis' clock
- `fair:pending:{owner}`  list: an API key's bulk chunks not yet handed to the broker, oldest first, as JSON
                        {"id", "jobs"} (service/fairshare.py)
- `fair:in-flight:{owner}`  sorted set: ids of the key's chunks released to the broker and not finished, scored
                        by when they were released, on Redis' clock
- `fair:chunks:{owner}`  hash: chunk id -> JSON {"id", "jobs"} of each chunk in flight (which jobs it names)
- `admissions`          hash: batch id -> places in the queue still reserved for the batch's jobs not yet stored
                        (a batch is stored a chunk at a time as its upload is read)
- `sweep`               string: the name of the process whose turn it is to reconcile the books, expiring after
                        SWEEP_INTERVAL (service/reconciler.py)
- `fair:owners`         set: the keys with bulk chunks pending or in flight
- `webhooks:due`        sorted set: ids of batches whose callback is due and not yet delivered or given up, scored by
                        when something must next happen to it (service/deliveries.py)
- `images:owned`        sorted set: the s3:// location of each image the service wrote to the object store, scored
                        by when it may be deleted, on Redis' clock: JOB_TTL after it was written, or at once when
                        its job finishes (service/imagestore.py; the worker and the reconciler delete them)
- `admissions:bytes`    hash: batch id -> bytes of Redis still reserved for the batch's jobs not yet stored (the
                        byte budget: service/scripts.py, OPEN_BATCH)
- `deliveries:due:{channel}`  sorted set: the same as `webhooks:due`, for each report channel (`report_dicom`,
                        `report_stow`: service/channels.py); the callbacks' registry keeps its older name
- `batch:{id}:study-header`  string: a small Part-10 DICOM file, the patient and study modules of one instance of
                        the batch's study (pneuradnet/sr.py, study_header), kept to write its report; patient data,
                        so only DICOM bytes, expiring with the batch
- `fair:released:{request}`  string: JSON {"run", "released"}: what a fair-share step released (a chunk's finish,
                        named by the chunk; an admission, by its own id), so that its repeat answers the same and a
                        second run of the chunk's task releases nothing
- `dicom:studies`      sorted set: the StudyInstanceUID of each study the DICOM node is receiving, scored by when it
                        is quiet long enough to close (DICOM_STUDY_TIMEOUT after its last instance), on Redis' clock
                        (service/studies.py)
- `dicom:study:{uid}`   string: the id of the batch a study's instances go to while it is open, expiring JOB_TTL
                        after it opened

The Celery broker's own keys (the queue lists, kombu's unacked hash) are kombu's, named in service/queue.py and
service/broker.py.
"""

PREFIX = "pneuradnet"
BULK_QUEUED_REGISTRY = f"{PREFIX}:registry:queued"
"""The bulk lane's queued jobs (its name predates lanes)."""
INTERACTIVE_QUEUED_REGISTRY = f"{PREFIX}:registry:queued:interactive"
RUNNING_REGISTRY = f"{PREFIX}:registry:running"
METRICS = f"{PREFIX}:metrics"
WORKERS = f"{PREFIX}:workers"
FAIR_OWNERS = f"{PREFIX}:fair:owners"
SWEEP_LOCK = f"{PREFIX}:sweep"
WEBHOOKS_DUE = f"{PREFIX}:webhooks:due"
ADMISSIONS = f"{PREFIX}:admissions"
ADMISSION_BYTES = f"{PREFIX}:admissions:bytes"
IMAGES_OWNED = f"{PREFIX}:images:owned"
DICOM_STUDIES = f"{PREFIX}:dicom:studies"

WORKER_TTL = 30
"""Seconds a worker's announcement lives without a heartbeat; a worker beats every WORKER_TTL / 3."""


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def image_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:image"


def heatmap_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:heatmap"


def job_channel(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:events"


def batch_key(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}"


def batch_channel(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}:events"


def batch_jobs_key(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}:jobs"


def idempotency_key(owner: str, key: str) -> str:
    return f"{PREFIX}:idempotency:{owner}:{key}"


def worker_key(name: str) -> str:
    return f"{PREFIX}:worker:{name}"


def fair_pending_key(owner: str) -> str:
    return f"{PREFIX}:fair:pending:{owner}"


def fair_in_flight_key(owner: str) -> str:
    return f"{PREFIX}:fair:in-flight:{owner}"


def fair_chunks_key(owner: str) -> str:
    return f"{PREFIX}:fair:chunks:{owner}"


def deliveries_due_key(channel: str) -> str:
    """The due registry of a delivery channel (service/channels.py)."""
    return WEBHOOKS_DUE if channel == "callback" else f"{PREFIX}:deliveries:due:{channel}"


def study_header_key(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}:study-header"


def fair_released_key(request: str) -> str:
    return f"{PREFIX}:fair:released:{request}"


def dicom_study_key(study_uid: str) -> str:
    return f"{PREFIX}:dicom:study:{study_uid}"
