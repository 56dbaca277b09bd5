"""What a received DICOM instance is, read from its header alone: its UIDs, its class and transfer syntax, and whether
the service can classify it. The intake (DICOMweb STOW-RS, the DICOM node) decides with this before storing a job.

Privacy: only the elements in _IDENTITY and the file meta are parsed; patient and study data are skipped unread.
"""

from dataclasses import dataclass
from typing import IO

import pydicom
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

CLASSIFIABLE_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
"""The storage SOP classes of projection radiography (mammography's DX classes are not chest radiographs) and
Secondary Capture (a radiograph scanned or exported as a picture): what the model was trained on."""

_IDENTITY = ["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"]


class UnreadableHeader(ValueError):
    """Not a DICOM Part-10 file, or its header is cut or corrupt."""


@dataclass(frozen=True)
class DicomIdentity:
    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str

    @property
    def classifiable(self) -> bool:
        return self.sop_class_uid in CLASSIFIABLE_CLASSES

    @property
    def decodable(self) -> bool:
        """Whether an installed decoder reads its pixel data (the uncompressed syntaxes, JPEG baseline and lossless,
        JPEG-LS, JPEG 2000 and RLE with the pylibjpeg plug-ins)."""
        return decodable(self.transfer_syntax_uid)


def decodable_transfer_syntaxes() -> list[UID]:
    """Every transfer syntax an installed decoder reads (what the DICOM node offers for each class)."""
    return [UID(syntax) for syntax in AllTransferSyntaxes if decodable(syntax)]


def decodable(transfer_syntax_uid: str) -> bool:
    """Whether an installed decoder reads pixel data in this transfer syntax."""
    try:
        return bool(get_decoder(UID(transfer_syntax_uid)).is_available)
    except NotImplementedError:  # no decoder exists for it (video, JPEG XL, a private syntax, ...)
        return False


def read_identity(file: IO[bytes]) -> DicomIdentity:
    """The identity of the Part-10 file at `file`'s current position (which it leaves anywhere); UnreadableHeader
    if it has no preamble and file meta, or lacks one of the UIDs."""
    try:
        dataset = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=_IDENTITY)
    except Exception as error:  # pydicom fails on a broken header in many ways: ValueError, KeyError, struct.error...
        raise UnreadableHeader("not a DICOM Part-10 file, or its header is corrupt") from error
    study, series, sop_class, sop_instance = (str(dataset.get(keyword, "") or "") for keyword in _IDENTITY)
    syntax = str(dataset.file_meta.get("TransferSyntaxUID", "") or "")
    if not all((study, series, sop_class, sop_instance, syntax)):
        raise UnreadableHeader("the DICOM header lacks its study, series or instance UIDs, or its transfer syntax")
    return DicomIdentity(study, series, sop_class, sop_instance, syntax)
