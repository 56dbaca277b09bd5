"""Every setting of the API and the workers, read once from the environment (see the README's table)."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pneuradnet.images import MAX_ASPECT_RATIO, MIN_SIDE, ShapeLimits
from pneuradnet.manifest import MODEL_CACHE_DIR
from service.channels import DicomDestination
from service.imagestore import ObjectLocation, parse_sources
from service.webhooks import HostPattern, parse_host_patterns

MIN_WEBHOOK_SECRET = 16
"""Fewest characters of WEBHOOK_SECRET when callbacks are on."""

AE_TITLE = r"^[ -\[\]-~]*[!-\[\]-~][ -\[\]-~]*$"
"""A DICOM AE title: printable ASCII but the backslash, not only spaces (and at most 16 characters)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Job store and Celery broker."""

    model_manifest: str = "default"
    """A manifest name in models/ or the path of a manifest JSON file."""
    model_path: Path | None = None
    """Overrides the model file the manifest names."""
    inference_runtime: Literal["onnxruntime", "tensorflow"] = "onnxruntime"
    """onnxruntime serves the model's cached ONNX conversion (faster, lighter); tensorflow is the reference."""
    model_cache_dir: Path = MODEL_CACHE_DIR
    """Where converted models are kept, keyed by the model file's checksum and the converter's version."""

    job_ttl: int = Field(default=24 * 3600, gt=0)
    """Seconds a job's record and result are kept after submission."""
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    """Largest request body accepted by POST /jobs and POST /predict: what the client sends, archives as sent."""
    max_unzipped_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    """Most bytes the ZIP archives of one request may expand to (radiographs barely compress; bombs do)."""
    max_files_per_request: int = Field(default=1000, gt=0)
    """Most images (files, or members of a ZIP) in one request."""
    predict_timeout: float = Field(default=60.0, gt=0)
    """Seconds POST /predict waits for its result before answering 504."""

    worker_concurrency: int = Field(default=1, gt=0)
    """Model-serving processes per worker container; each loads its own copy of the model."""
    worker_threads: int | None = Field(default=None, gt=0)
    """Inference threads per worker process; default: the host's cores divided by WORKER_CONCURRENCY."""
    max_batch: int = Field(default=16, gt=0, le=256)
    """Images per forward pass, and per task of the interactive lane."""
    bulk_chunk: int = Field(default=64, gt=0, le=1024)
    """Images per task of the bulk lane: classified in forward passes of max_batch, each pass's images read and
    decoded while the previous pass runs."""
    batch_wait_ms: float = Field(default=10.0, ge=0)
    """Longest a submission waits in the API for others to share its task (bulk uploads fill one at once)."""
    min_image_side: int = Field(default=MIN_SIDE, gt=0)
    """Shortest side of an image that is classified, in pixels; a smaller one fails its job as invalid-image."""
    max_image_aspect_ratio: float = Field(default=MAX_ASPECT_RATIO, ge=1)
    """Most elongated image that is classified (longest side over shortest); beyond it the job fails."""
    job_timeout: int = Field(default=60, gt=0)
    """Seconds a task (up to MAX_BATCH images) may run before it is stopped and its jobs fail."""
    sweep_interval: float = Field(default=30.0, gt=0)
    """Seconds between sweeps of the reconciler (service/reconciler.py), which one process of the fleet runs in
    turn: expired ids leave the registries, jobs of vanished workers and jobs without a task are dispatched again."""
    max_deliveries: int = Field(default=3, gt=0)
    """Times a job may be handed to a worker; a job whose worker keeps dying fails after this many."""

    interactive_max_images: int = Field(default=4, ge=0)
    """Largest submission that goes to the interactive lane, which workers serve before bulk work; POST /predict
    always does. 0: only POST /predict."""
    max_queue: int = Field(default=10_000, gt=0)
    """Most jobs waiting in the queue; beyond it POST /jobs answers 429 and enqueues nothing."""
    redis_budget_bytes: int = Field(default=0, ge=0)
    """Most bytes Redis may hold before a submission is refused (429 store-full); 0: 90% of Redis' own maxmemory,
    read at each admission, or no byte budget when Redis has none."""

    image_store: str = "redis"
    """Where uploaded images wait for their jobs: `redis`, or `s3://bucket/prefix` in an S3-compatible store
    reached with the standard AWS variables (service/imagestore.py)."""
    image_sources: str = ""
    """Comma-separated `s3://bucket/prefix/` locations a submission by reference may name; empty: none."""
    max_references: int = Field(default=100_000, gt=0)
    """Most objects one submission by reference may name, listed or found under a prefix."""
    aws_endpoint_url: str | None = None
    """The S3-compatible endpoint (AWS_ENDPOINT_URL, the AWS SDKs' own variable): read here only to allow plain
    HTTP when it is an http:// address; the client resolves it and the other AWS variables itself."""
    explain_enabled: bool = True
    """Off: POST /jobs?explain=true is refused (422) and workers never load TensorFlow for Grad-CAM."""
    api_keys: str = Field(default="", repr=False)
    """Comma-separated keys; when set, every route but health needs `Authorization: Bearer <key>`."""

    webhook_allowed_hosts: str = ""
    """Comma-separated host patterns callback_url may name (service/webhooks.py); empty: callbacks are off."""
    webhook_secret: str = Field(default="", repr=False)
    """Key of every callback's HMAC-SHA256 signature; at least 16 characters, required when callbacks are on."""
    webhook_max_age: float = Field(default=3600.0, gt=0)
    """Seconds after a batch finishes during which its callback is retried (5xx, no answer)."""
    webhook_timeout: float = Field(default=10.0, gt=0, le=60)
    """Seconds a callback may take to connect, and each send or read of it; the whole attempt at most 3 times it."""

    dicom_results_to: str = ""
    """`AET@host:port` a study's structured report is C-STOREd to (service/channels.py); empty: none."""
    dicom_results_stow_url: str = ""
    """The STOW-RS URL (`.../studies`) a study's structured report is POSTed to; empty: none."""
    dicom_explain: bool = False
    """Batches of DICOM studies are opened with explain: each image's Grad-CAM heatmap goes with the study's report,
    as a secondary capture in a series of its own (service/reports.py)."""

    task_events: bool = True
    """Workers send Celery's task events (for Flower), off their main loop (service/events.py)."""

    port: int = 8000
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    """json: one JSON object per line, with job events as fields (event, job_id, batch_id, status)."""

    dicom_port: int = Field(default=11112, gt=0, lt=65536)
    """TCP port of the DICOM node (dicomnode/): C-ECHO and C-STORE."""
    dicom_ae_title: str = Field(default="PNEURADNET", max_length=16, pattern=AE_TITLE)
    """The node's AE title: what a PACS or modality calls it (1-16 characters, no backslash)."""
    dicom_allowed_peers: str = ""
    """Comma-separated `AET` or `AET@host` allowed to send to the node; anyone else is rejected at association.
    Empty: any peer."""
    dicom_study_timeout: float = Field(default=30.0, gt=0)
    """Seconds without a new instance of a study after which its batch closes."""

    @field_validator("model_manifest")
    @classmethod
    def _manifest_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("MODEL_MANIFEST must name a manifest")
        return value

    @field_validator("image_store")
    @classmethod
    def _image_store_known(cls, value: str) -> str:
        if value == "redis":
            return value
        location = ObjectLocation.parse(value)  # a ValueError stops the service at start, with the value named
        return str(ObjectLocation(location.bucket, location.key.rstrip("/")))

    @field_validator("image_sources")
    @classmethod
    def _image_sources_valid(cls, value: str) -> str:
        parse_sources(value)
        return value

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _host_patterns_valid(cls, value: str) -> str:
        parse_host_patterns(value)  # a malformed pattern stops the service at start, with the entry named
        return value

    @field_validator("dicom_results_to")
    @classmethod
    def _dicom_destination_valid(cls, value: str) -> str:
        if value.strip():
            DicomDestination.parse(value)  # a malformed one stops the service at start, with the value named
        return value.strip()

    @field_validator("dicom_results_stow_url")
    @classmethod
    def _stow_url_valid(cls, value: str) -> str:
        if value.strip() and not value.strip().startswith(("http://", "https://")):
            raise ValueError(f"DICOM_RESULTS_STOW_URL {value!r} is not an http(s) URL")
        return value.strip()

    @model_validator(mode="after")
    def _callbacks_signed(self) -> "Settings":
        # Refused at start rather than per request: an unsigned callback could be forged by anyone who can reach
        # the receiver, and a service that accepts callback_url and never calls it would fail silently.
        if self.webhook_host_patterns and len(self.webhook_secret) < MIN_WEBHOOK_SECRET:
            raise ValueError(f"WEBHOOK_ALLOWED_HOSTS is set, so WEBHOOK_SECRET must be too, of {MIN_WEBHOOK_SECRET} "
                             "characters at least (callbacks are signed with it)")
        return self

    @property
    def webhook_host_patterns(self) -> tuple[HostPattern, ...]:
        return parse_host_patterns(self.webhook_allowed_hosts)

    @property
    def image_bucket(self) -> ObjectLocation | None:
        """The folder of the bucket uploaded images go to; None: they stay in Redis."""
        return None if self.image_store == "redis" else ObjectLocation.parse(self.image_store)

    @property
    def image_source_list(self) -> tuple[ObjectLocation, ...]:
        return parse_sources(self.image_sources)

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @property
    def shape_limits(self) -> ShapeLimits:
        return ShapeLimits(min_side=self.min_image_side, max_aspect_ratio=self.max_image_aspect_ratio)

    @property
    def inference_threads(self) -> int:
        return self.worker_threads or max(1, (os.cpu_count() or 1) // self.worker_concurrency)


@lru_cache
def get_settings() -> Settings:
    return Settings()
