"""Images kept in an S3-compatible bucket rather than in Redis (IMAGE_STORE=s3://bucket/prefix), and images a
client names by reference (IMAGE_SOURCES): reading, writing, deleting and listing objects, many at a time.

The client is obstore (the Rust object_store crate): measured against SeaweedFS on loopback with 250 KB
radiographs, a GET took 1.4 ms and 16 in parallel 6.7 ms, against boto3's 3.6 ms and 32 ms (boto3 spends its
time in Python, holding the GIL, so its threads barely overlap), and its CPU is the worker's model's to use
(BENCHMARKS.md, "Object store"). Connection settings come from the standard AWS variables through the SDK's own
resolution (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, ...), with path-style
addressing unless AWS_VIRTUAL_HOSTED_STYLE_REQUEST says otherwise; an endpoint given as http:// is reached
without TLS (a local or private store).
"""

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import obstore
from obstore.exceptions import BaseError, GenericError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

T = TypeVar("T")

SCHEME = "s3://"

PARALLEL_REQUESTS = 16
"""Requests to the store at once: a chunk's images (MAX_BATCH, 16 by default) in one round."""

CONNECT_TIMEOUT = timedelta(seconds=5)
REQUEST_TIMEOUT = timedelta(seconds=30)
"""The longest one request may take: a 30 MB DICOM over a slow link."""

RETRIES = 3
RETRY_TIMEOUT = timedelta(seconds=10)
"""A request that fails for a passing reason (a 5xx, a dropped connection) is retried with backoff, at most this
often and this long; then the store counts as unavailable."""


@dataclass(frozen=True)
class ObjectLocation:
    """An object of an S3-compatible store: `s3://bucket/key`."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> "ObjectLocation":
        """The location an `s3://bucket/key` names (the key may be empty: a bucket, or a prefix ending in /)."""
        if not uri.startswith(SCHEME):
            raise ValueError(f"{uri!r} is not an s3:// location")
        bucket, _, key = uri[len(SCHEME):].partition("/")
        if not bucket:
            raise ValueError(f"{uri!r} names no bucket")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    def child(self, name: str) -> "ObjectLocation":
        """The object `name` under this location, taken as a folder."""
        return ObjectLocation(self.bucket, f"{self.key.rstrip('/')}/{name}" if self.key else name)

    def within(self, prefix: "ObjectLocation") -> bool:
        """Whether this object is under `prefix` (a bucket, or a folder of one)."""
        return self.bucket == prefix.bucket and self.key.startswith(prefix.key)


def parse_sources(text: str) -> tuple[ObjectLocation, ...]:
    """IMAGE_SOURCES: comma-separated `s3://bucket/` or `s3://bucket/prefix/` locations; ValueError if one is not.
    A prefix is taken as a folder: `s3://archive/2026` allows `s3://archive/2026/...`, not `s3://archive/2026-old`."""
    sources = []
    for entry in (part.strip() for part in text.split(",")):
        if entry:
            location = ObjectLocation.parse(entry)
            sources.append(ObjectLocation(location.bucket, location.key.rstrip("/") + "/" if location.key else ""))
    return tuple(sources)


class ObjectStoreUnavailable(Exception):
    """The object store did not answer, or refused the service's credentials: nothing is wrong with the object."""


class ObjectUnreadable(Exception):
    """One object cannot be read: it does not exist, or the service may not read it. The message says which."""


class TooManyObjects(Exception):
    """A prefix holds more objects than may be listed at once."""


class ObjectStore:
    """The S3-compatible store the AWS variables name: every bucket of it, reached in parallel."""

    def __init__(self, *, endpoint: str | None) -> None:
        """`endpoint`: AWS_ENDPOINT_URL, only to know whether to allow plain HTTP (the SDK reads it itself)."""
        self._client_options = {"connect_timeout": CONNECT_TIMEOUT, "timeout": REQUEST_TIMEOUT,
                                "allow_http": bool(endpoint and endpoint.startswith("http://"))}
        self._buckets: dict[str, S3Store] = {}
        self._pool = ThreadPoolExecutor(PARALLEL_REQUESTS, thread_name_prefix="object-store")

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def put_many(self, objects: Sequence[tuple[ObjectLocation, bytes]]) -> None:
        """Write each object, in parallel; ObjectStoreUnavailable if any write failed (some may have been made)."""
        outcomes = self._each(lambda item: obstore.put(self._bucket(item[0].bucket), item[0].key, item[1]), objects)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise _unavailable(outcome) from outcome

    def get_many(self, locations: Sequence[ObjectLocation]) -> list[bytes | ObjectUnreadable]:
        """Each object's bytes, read in parallel, or why that one cannot be read; ObjectStoreUnavailable if the
        store itself does not answer."""
        read: list[bytes | ObjectUnreadable] = []
        for reading in self.get_each(locations):
            try:
                read.append(reading.result())
            except ObjectUnreadable as unreadable:
                read.append(unreadable)
        return read

    def get_each(self, locations: Sequence[ObjectLocation]) -> list["Future[bytes]"]:
        """Start reading each object, PARALLEL_REQUESTS at a time: a future of its bytes, which raises
        ObjectUnreadable for that object, or ObjectStoreUnavailable."""
        return [self._pool.submit(self._get, location) for location in locations]

    def _get(self, location: ObjectLocation) -> bytes:
        try:
            return bytes(obstore.get(self._bucket(location.bucket), location.key).bytes())
        except FileNotFoundError as error:
            raise ObjectUnreadable(f"the object {location} does not exist") from error
        except PermissionDeniedError as error:
            raise ObjectUnreadable(f"the service may not read the object {location}") from error
        except Exception as error:
            raise _unavailable(error) from error

    def delete_many(self, locations: Sequence[ObjectLocation]) -> None:
        """Delete the objects (one request per bucket, in parallel); one already gone is no error."""
        by_bucket: dict[str, list[str]] = {}
        for location in locations:
            by_bucket.setdefault(location.bucket, []).append(location.key)
        for outcome in self._each(lambda item: obstore.delete(self._bucket(item[0]), item[1]), list(by_bucket.items())):
            if isinstance(outcome, BaseException) and not isinstance(outcome, FileNotFoundError):
                raise _unavailable(outcome) from outcome

    def list_under(self, prefix: ObjectLocation, *, limit: int) -> list[ObjectLocation]:
        """The objects under `prefix`, in key order; TooManyObjects past `limit`."""
        found: list[ObjectLocation] = []
        try:
            for page in obstore.list(self._bucket(prefix.bucket), prefix=prefix.key or None, chunk_size=1000):
                found += [ObjectLocation(prefix.bucket, meta["path"]) for meta in page]
                if len(found) > limit:
                    raise TooManyObjects(f"{prefix} holds more than {limit:,} objects")
        except BaseError as error:
            raise _unavailable(error) from error
        return sorted(found, key=lambda location: location.key)

    def _bucket(self, name: str) -> S3Store:
        if name not in self._buckets:
            self._buckets[name] = S3Store(name, client_options=self._client_options,  # type: ignore[arg-type]
                                          retry_config={"max_retries": RETRIES, "retry_timeout": RETRY_TIMEOUT})
        return self._buckets[name]

    def _each(self, call: Callable[[T], object], items: Sequence[T]) -> list[object]:
        """`call` on every item, PARALLEL_REQUESTS at a time; each result, or the exception it raised."""
        def outcome(item: T) -> object:
            try:
                return call(item)
            except Exception as error:
                return error
        return list(self._pool.map(outcome, items))


def _unavailable(error: BaseException) -> ObjectStoreUnavailable:
    if isinstance(error, (PermissionDeniedError, UnauthenticatedError)):
        return ObjectStoreUnavailable(f"the object store refused the service's credentials ({error})"[:500])
    if isinstance(error, GenericError):
        return ObjectStoreUnavailable(f"the object store does not answer ({str(error).splitlines()[0]})"[:500])
    return ObjectStoreUnavailable(f"the object store failed ({type(error).__name__}: {error})"[:500])
