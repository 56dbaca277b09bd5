"""The ways a finished batch's outcome leaves the service, each delivered exactly once through the same machinery
(service/deliveries.py): its state is a set of `<channel>_*` fields of the batch hash, and each channel has a due
registry of its own (service/keys.py, deliveries_due_key)."""

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


class Channel(StrEnum):
    CALLBACK = "callback"
    """The signed JSON summary POSTed to the submission's callback_url (worker/webhooks.py)."""
    REPORT_DICOM = "report_dicom"
    """The study's structured report (and heatmap captures), C-STOREd to DICOM_RESULTS_TO (worker/reports.py)."""
    REPORT_STOW = "report_stow"
    """The same objects, POSTed by STOW-RS to DICOM_RESULTS_STOW_URL (worker/reports.py)."""


REPORT_CHANNELS = (Channel.REPORT_DICOM, Channel.REPORT_STOW)
"""The report channels, in the order the scripts take their due registries (service/scripts.py)."""


@dataclass(frozen=True)
class Reports:
    """What a batch opened from a study asks (JobStore.open_batch): where its report goes, and the study it files
    into. At least one destination."""

    study_header: bytes
    """The patient and study modules of one received instance, as a small Part-10 file
    (pneuradnet.sr.header_bytes(pneuradnet.sr.study_header(dataset))): patient data, kept only as these bytes,
    expiring with the batch."""
    dicom_to: str = ""
    """`AET@host:port` of the C-STORE destination (DICOM_RESULTS_TO); '' for none."""
    stow_url: str = ""
    """The STOW-RS studies URL (DICOM_RESULTS_STOW_URL); '' for none."""

    def __post_init__(self) -> None:
        if not (self.dicom_to or self.stow_url):
            raise ValueError("a batch's reports need a destination: DICOM_RESULTS_TO or DICOM_RESULTS_STOW_URL")
        if not self.study_header:
            raise ValueError("a batch's reports need the study header of one of its instances")

    def destinations(self) -> dict[Channel, str]:
        """Each report channel asked, with where it goes."""
        return {channel: to for channel, to in zip(REPORT_CHANNELS, (self.dicom_to, self.stow_url), strict=True)
                if to}


def reports_asked(instance: "Dataset", *, dicom_to: str, stow_url: str) -> Reports | None:
    """What a batch of the study `instance` belongs to asks, given where reports go (DICOM_RESULTS_TO,
    DICOM_RESULTS_STOW_URL): pass it to JobStore.open_batch, with explain=DICOM_EXPLAIN (a batch opened with explain
    sends each image's heatmap capture with its report). None when reports go nowhere. pneuradnet.sr.ReportError
    when the instance names no study."""
    if not (dicom_to or stow_url):
        return None
    # Imported on first use: highdicom adds about 20 MB to a process, and only one that receives studies needs it
    # (the API's other routes never do).
    from pneuradnet.sr import header_bytes, study_header

    return Reports(study_header=header_bytes(study_header(instance)), dicom_to=dicom_to, stow_url=stow_url)


@dataclass(frozen=True)
class DicomDestination:
    """A DICOM node a report is C-STOREd to: `AET@host:port` (DICOM_RESULTS_TO)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "DicomDestination":
        """ValueError, naming the value, unless it is `AET@host:port` (an AE title of 1-16 characters)."""
        ae_title, _, address = text.strip().partition("@")
        host, _, port = address.rpartition(":")
        if not (0 < len(ae_title.strip()) <= 16 and "\\" not in ae_title and host and port.isdigit()
                and 0 < int(port) < 65536):
            raise ValueError(f"{text!r} is not AET@host:port (an AE title of at most 16 characters)")
        return cls(ae_title.strip(), host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"
