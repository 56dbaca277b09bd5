"""Reading a DICOMweb STOW-RS request (PS3.18 10.5, Store Instances): a `multipart/related;
type="application/dicom"` body whose parts are DICOM Part-10 files, each spooled to a temporary file as it arrives
(a full-size radiograph is 10-30 MB: the API never holds more than a MiB of one), then identified from its header
alone, and planned as one batch per study.

What can be refused as a whole is refused before anything is stored (a body that is not such a multipart, too many
bytes or instances); what concerns one instance fails that instance alone, with its FailureReason, as PS3.18's
Store Instances Response reports it.
"""

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from tempfile import SpooledTemporaryFile
from typing import IO

from pydicom import dcmread
from pydicom.dataset import Dataset
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from api.problems import ProblemError
from api.uploads import PlannedImage, UploadPlan
from pneuradnet.dicomidentity import DicomIdentity, UnreadableHeader, read_identity
from service.jobstore import Upload

DICOM = "application/dicom"
SPOOL_BYTES = 1 << 20
"""Bytes of one instance kept in memory before its temporary file goes to disk."""


class FailureReason(IntEnum):
    """PS3.18's Store Instances Response failure reasons (Table 10.5.3-3), those this service answers."""

    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DOES_NOT_MATCH = 0xA900
    """The instance is not of the study the request's URL names."""
    CANNOT_UNDERSTAND = 0xC000
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


@dataclass
class Instance:
    """One part of the body: its spooled bytes, and what its header says (None if unreadable)."""

    file: IO[bytes]
    size: int = 0
    identity: DicomIdentity | None = None
    failure: FailureReason | None = None
    """Why it will not become a job, known from its header."""

    def read(self) -> Upload:
        self.file.seek(0)
        assert self.identity is not None
        # The job's name is the SOP Instance UID: a file name could carry a patient's name.
        return Upload(filename=f"{self.identity.sop_instance_uid}.dcm", data=self.file.read())


@dataclass
class StowBody:
    instances: list[Instance] = field(default_factory=list)

    def studies(self) -> dict[str, UploadPlan]:
        """A plan per study of the instances that can become jobs, in the order they came."""
        plans: dict[str, UploadPlan] = {}
        for instance in self.instances:
            if instance.failure is None and instance.identity is not None:
                plans.setdefault(instance.identity.study_uid, UploadPlan(images=[])).images.append(PlannedImage(
                    instance.identity.sop_instance_uid, instance.identity.sop_instance_uid.encode(), instance.read,
                    instance.size))
        return plans

    def header_of(self, study_uid: str) -> Dataset:
        """The header of the study's first instance, without its pixels: its patient and study modules go into
        the study's report. Blocking."""
        first = next(instance for instance in self.instances
                     if instance.identity is not None and instance.identity.study_uid == study_uid)
        first.file.seek(0)
        return dcmread(first.file, stop_before_pixels=True)

    def close(self) -> None:
        for instance in self.instances:
            instance.file.close()


def boundary_of(content_type: str) -> bytes:
    """The multipart boundary of a STOW-RS request; 415 for any other body."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/related" or options.get(b"type", DICOM.encode()) != DICOM.encode():
        raise ProblemError(415, "unsupported-media-type", 'STOW-RS takes multipart/related; type="application/dicom" '
                           f"(each part a DICOM Part-10 file), not {content_type or 'a body without a Content-Type'}")
    if not options.get(b"boundary"):
        raise ProblemError(400, "invalid-multipart", "the multipart/related Content-Type has no boundary")
    return options[b"boundary"]


async def read_stow_body(stream: AsyncIterator[bytes], content_type: str, *, max_bytes: int, max_instances: int,
                         study_uid: str | None = None) -> StowBody:
    """The instances of a STOW-RS body, spooled and identified; `study_uid`: the study the URL names, if any."""
    body = StowBody()
    try:
        parser = _parser(body, boundary_of(content_type), max_instances=max_instances)
        received = 0
        async for piece in stream:
            received += len(piece)
            if received > max_bytes:
                raise ProblemError(413, "upload-too-large", f"the request is larger than the limit of {max_bytes:,} "
                                   "bytes (MAX_UPLOAD_BYTES); send the study in several requests")
            if piece:
                # Past SPOOL_BYTES a part goes to disk: written in a thread, not on the event loop.
                await run_in_threadpool(parser.write, piece)
        parser.finalize()
        if not body.instances:
            raise ProblemError(400, "invalid-multipart", "the body holds no part: send each instance as a part of "
                               'multipart/related; type="application/dicom"')
        await run_in_threadpool(_identify, body, study_uid)
    except BaseException:
        body.close()
        raise
    return body


def _parser(body: StowBody, boundary: bytes, *, max_instances: int) -> MultipartParser:
    header: dict[str, bytearray] = {}
    current: list[bytearray] = []

    def begin() -> None:
        if len(body.instances) >= max_instances:
            raise ProblemError(413, "too-many-files", f"more than {max_instances} instances in one request "
                               "(MAX_FILES_PER_REQUEST); send the study in several requests")
        header.clear()
        body.instances.append(Instance(SpooledTemporaryFile(max_size=SPOOL_BYTES)))  # noqa: SIM115 (closed by body)

    def data(chunk: bytes, start: int, end: int) -> None:
        instance = body.instances[-1]
        instance.file.write(chunk[start:end])
        instance.size += end - start

    def header_field(chunk: bytes, start: int, end: int) -> None:
        current[:] = [bytearray(chunk[start:end].lower())]

    def header_value(chunk: bytes, start: int, end: int) -> None:
        header.setdefault(current[0].decode("latin-1"), bytearray()).extend(chunk[start:end])

    def headers_done() -> None:
        declared = parse_options_header(bytes(header.get("content-type", b"")))[0]
        if declared not in (b"", DICOM.encode()):  # e.g. application/dicom+json metadata: not this transaction's
            body.instances[-1].failure = FailureReason.CANNOT_UNDERSTAND

    return MultipartParser(boundary, {"on_part_begin": begin, "on_part_data": data, "on_header_field": header_field,
                                      "on_header_value": header_value, "on_headers_finished": headers_done})


def _identify(body: StowBody, study_uid: str | None) -> None:
    for instance in body.instances:
        instance.file.seek(0)
        try:
            instance.identity = read_identity(instance.file)
        except UnreadableHeader:
            instance.failure = FailureReason.CANNOT_UNDERSTAND
            continue
        if instance.failure is None:
            instance.failure = _failure(instance.identity, study_uid)


def _failure(identity: DicomIdentity, study_uid: str | None) -> FailureReason | None:
    if study_uid is not None and identity.study_uid != study_uid:
        return FailureReason.DOES_NOT_MATCH
    if not identity.classifiable:
        return FailureReason.SOP_CLASS_NOT_SUPPORTED
    if not identity.decodable:
        return FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED
    return None


def referenced(instances: Iterator[Instance]) -> list[dict[str, object]]:
    """Store Instances Response items (DICOM JSON) for instances: their SOP class and instance, and the
    failure reason of those that failed."""
    items = []
    for instance in instances:
        item: dict[str, object] = {}
        if instance.identity is not None:
            item["00081150"] = {"vr": "UI", "Value": [instance.identity.sop_class_uid]}
            item["00081155"] = {"vr": "UI", "Value": [instance.identity.sop_instance_uid]}
        if instance.failure is not None:
            item["00081197"] = {"vr": "US", "Value": [int(instance.failure)]}
        items.append(item)
    return items
