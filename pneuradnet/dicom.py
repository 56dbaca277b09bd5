"""Decoding a DICOM file into an 8-bit Pillow image as a radiology viewer shows it, or a clear InvalidImageError.

Imported by pneuradnet.images only when a file carries the DICOM marker: pydicom comes with the `dicom` extra,
and compressed transfer syntaxes are decoded by the pylibjpeg plugins that come with it.

Privacy: only the header elements in _READ are parsed at all; everything else (the patient's name and IDs,
dates, institution, physicians, accession number, ...) is skipped unread, so it cannot reach a log, an error
message or a result. Of what is read, only the FACTS leave this module, and pydicom's value validation is off
while it reads (its warnings quote the value). No message of pydicom's is passed on. The FACTS include the study,
series and SOP instance UIDs: they name the objects (a structured report must reference the image it is about,
pneuradnet/sr.py), not the patient.
"""

import io
import re
from collections.abc import Callable

import numpy as np
import pydicom
from PIL import Image
from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, pixel_array
from pydicom.uid import UID

from pneuradnet.dicomidentity import decodable
from pneuradnet.errors import InvalidImageError
from pneuradnet.images import SAMPLED_FROM, SOURCE_INFO, check_size
from pneuradnet.preprocess import nearest_sample_points

FACTS = {
    "modality": "Modality",
    "view_position": "ViewPosition",
    "rows": "Rows",
    "columns": "Columns",
    "frames": "NumberOfFrames",
    "photometric_interpretation": "PhotometricInterpretation",
    "bits_stored": "BitsStored",
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
    "sop_class_uid": "SOPClassUID",
}
"""Result key -> DICOM keyword: the only header values a result carries. An allow-list: none identifies anyone."""

_UID_FACTS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"})

FRAME_USED = 1
"""Which frame of a multi-frame file is classified, numbered from 1 as DICOM numbers frames."""

_PIXEL_MODULE = (
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelData",
    "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
)
_MODALITY_LUT = ("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence")
_VOI_LUT = ("VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction")
_READ = [*FACTS.values(), *_PIXEL_MODULE, *_MODALITY_LUT, *_VOI_LUT]
"""The only elements parsed; pydicom skips every other one without reading its value."""

_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
"""Three-sample interpretations; pydicom's decoders hand every one of them over as RGB."""

_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")
"""DICOM's CS value representation: what a modality or view position must look like to be reported."""

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
"""DICOM's UI value representation (at most 64 characters): what a UID must look like to be reported."""


def decode_dicom(data: bytes, *, max_pixels: int, max_side: int,
                 sample_to: tuple[int, int] | None = None) -> Image.Image:
    """The first frame of a DICOM file as an upright image in mode `L` or `RGB`, as a viewer displays it.

    Grayscale: rescale slope/intercept or Modality LUT, then the first VOI LUT or window (else the data's own
    range) maps to black..white, MONOCHROME1 is inverted so that bone is bright. `image.info[SOURCE_INFO]`
    holds the FACTS, with the frame count and the frame used.

    `sample_to` (width, height): a grayscale frame comes as Pillow's NEAREST resize of it to that size would, the
    display computed at the sample points only (on a 2,500 x 3,000 frame, 2 ms instead of 60: BENCHMARKS.md,
    "DICOM"), and `image.info[SAMPLED_FROM]` holds the frame's own size. Colour frames come whole.
    """
    with disable_value_validation():
        try:
            return _decode(data, max_pixels=max_pixels, max_side=max_side, sample_to=sample_to)
        except InvalidImageError:
            raise
        except Exception as error:  # e.g. a Rescale Slope that is not a number; pydicom's words may quote it
            raise InvalidImageError(f"the DICOM file cannot be decoded: its header holds an invalid value "
                                    f"({type(error).__name__})") from error


def facts(dataset: Dataset) -> dict[str, str | int | None]:
    """The FACTS of a dataset; a value that is not a plain number or code string is left out as None."""
    found: dict[str, str | int | None] = {"format": "DICOM"}
    for key, keyword in FACTS.items():
        try:
            value = dataset.get(keyword)
            found[key] = _uid(value) if keyword in _UID_FACTS else _plain(value)
        except (TypeError, ValueError):  # e.g. a Number of Frames that is not a number
            found[key] = None
    found["frames"] = found["frames"] or 1  # Number of Frames is absent from single-frame files
    found["frame_used"] = FRAME_USED
    return found


def _decode(data: bytes, *, max_pixels: int, max_side: int, sample_to: tuple[int, int] | None) -> Image.Image:
    dataset = _read(data)
    if "PixelData" not in dataset:
        raise InvalidImageError(f"the DICOM file has no pixel data{_what_it_is(dataset)}: it is not an image, "
                                "or it is truncated")
    rows, columns = _header_int(dataset, "Rows"), _header_int(dataset, "Columns")
    check_size(columns, rows, max_pixels=max_pixels, max_side=max_side)
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
    if photometric not in (*_GRAYSCALE, *_COLOUR):
        raise InvalidImageError(f"DICOM photometric interpretation {photometric or '(none)'} is not accepted: "
                                f"send {', '.join(_GRAYSCALE)} or RGB")
    frame = _first_frame(dataset)
    if photometric in _GRAYSCALE and sample_to is not None:
        height, width = frame.shape[:2]
        points = np.ix_(nearest_sample_points(height, sample_to[1]), nearest_sample_points(width, sample_to[0]))
        image = Image.fromarray(_displayed(frame, dataset, invert=photometric == "MONOCHROME1", points=points))
        image.info[SAMPLED_FROM] = (width, height)
    elif photometric in _GRAYSCALE:
        image = Image.fromarray(_displayed(frame, dataset, invert=photometric == "MONOCHROME1"))
    else:
        image = Image.fromarray(_colour(frame, dataset), "RGB")
    image.info[SOURCE_INFO] = facts(dataset)
    return image


class _Stream(io.BytesIO):
    """The file as pydicom reads it, noting whether pydicom ever wanted bytes past its end: pydicom reads a
    truncated file without complaint, dropping what is cut off."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.size = len(data)
        self.cut_short = False

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        # An empty read is how pydicom finds the end of the file; a partial one means an element was cut off.
        if size is not None and 0 < len(chunk) < size:
            self.cut_short = True
        return chunk

    def truncated(self) -> bool:
        return self.cut_short or self.tell() > self.size  # beyond the end: pydicom skipped an element cut off


def _read(data: bytes) -> Dataset:
    stream = _Stream(data)
    try:
        dataset = pydicom.dcmread(stream, specific_tags=_READ)
    except Exception as error:  # pydicom fails on a broken header in many ways: ValueError, KeyError, struct.error...
        raise InvalidImageError("the DICOM header is corrupt and cannot be read") from error
    # Every DICOM file has a transfer syntax and a SOP class: without them, what follows the marker is not DICOM.
    # (pydicom drops the whole data set when encapsulated pixel data is cut short, SOP class and all.)
    if "TransferSyntaxUID" not in dataset.file_meta:
        raise InvalidImageError("the DICOM header is corrupt and cannot be read")
    if stream.truncated():
        raise InvalidImageError("the DICOM file is truncated: it ends before its data does")
    if "SOPClassUID" not in dataset:
        raise InvalidImageError("the DICOM header is corrupt and cannot be read")
    return dataset


def _what_it_is(dataset: Dataset) -> str:
    sop_class = UID(str(dataset.SOPClassUID))
    return f" ({sop_class.name})" if sop_class.is_valid and sop_class.name != sop_class else ""


def _header_int(dataset: Dataset, keyword: str) -> int:
    try:
        return int(dataset[keyword].value)
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidImageError(f"the DICOM header has no valid {keyword}") from error


def _first_frame(dataset: Dataset) -> np.ndarray:
    syntax = UID(str(dataset.file_meta.TransferSyntaxUID))
    if not decodable(syntax):
        described = syntax if syntax.name == syntax else f"{syntax.name} ({syntax})"
        raise InvalidImageError(f"DICOM transfer syntax {described} cannot be decoded here")
    try:
        return pixel_array(dataset, index=FRAME_USED - 1)
    except Exception as error:  # the decoders raise ValueError, RuntimeError, ... on bad pixel data
        raise InvalidImageError("the DICOM pixel data is corrupt and cannot be decoded") from error


def _displayed(frame: np.ndarray, dataset: Dataset, *, invert: bool,
               points: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """The frame's 8-bit display; at `points` only (an np.ix_ of rows and columns), if given. Every step maps a
    pixel on its own but the data's own range (without VOI LUT or window), which is the whole frame's either way."""
    if points is None:
        values = apply_modality_lut(frame, dataset)
        values, black, white = _values_of_interest(values, dataset, lambda: (float(values.min()),
                                                                             float(values.max())))
    else:
        values = apply_modality_lut(frame[points], dataset)
        values, black, white = _values_of_interest(values, dataset, lambda: _modality_range(frame, dataset))
    if white > black:
        shade = np.clip((values.astype(np.float64) - black) / (white - black), 0.0, 1.0)
    else:
        shade = np.zeros(values.shape)
    if invert:
        shade = 1.0 - shade
    return np.rint(shade * 255.0).astype(np.uint8)


def _modality_range(frame: np.ndarray, dataset: Dataset) -> tuple[float, float]:
    """The least and the greatest value of the whole frame after its modality LUT, as apply_modality_lut computes
    each: a rescale is linear, so its extremes are those of the frame's own extremes; a LUT is looked up whole."""
    if "ModalityLUTSequence" in dataset:
        values = apply_modality_lut(frame, dataset)
        return float(values.min()), float(values.max())
    ends = apply_modality_lut(np.array([frame.min(), frame.max()], dtype=frame.dtype), dataset)
    return float(ends.min()), float(ends.max())


def _values_of_interest(values: np.ndarray, dataset: Dataset,
                        data_range: Callable[[], tuple[float, float]]) -> tuple[np.ndarray, float, float]:
    """The values after the file's first VOI LUT or window, and the two values shown as black and as white.

    Without either, the data's own range (`data_range`) is shown, as images.py stretches a 16-bit PNG.
    """
    if dataset.get("VOILUTSequence"):
        entries, first_mapped, _ = dataset.VOILUTSequence[0].LUTDescriptor
        every_output = apply_voi(np.arange(first_mapped, first_mapped + (entries or 2**16)), dataset, index=0)
        shown = apply_voi(np.rint(values).astype(np.int64), dataset, index=0)  # a LUT maps whole numbers
        return shown, float(every_output.min()), float(every_output.max())
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        try:
            # What the window maps everything below it and above it to: its black and its white.
            black, white = apply_windowing(np.array([-np.inf, np.inf]), dataset, index=0)
            return apply_windowing(values, dataset, index=0), float(black), float(white)
        except (TypeError, ValueError):
            pass  # a window pydicom refuses (a width under 1, not a number, ...) is ignored, as viewers do
    return values, *data_range()


def _colour(frame: np.ndarray, dataset: Dataset) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame
    top = 2 ** _header_int(dataset, "BitsStored") - 1
    levels: np.ndarray = np.rint(np.clip(frame, 0, top) * (255.0 / top)).astype(np.uint8)
    return levels


def _plain(value: object) -> str | int | None:
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str) and _CODE_STRING.fullmatch(value.strip()):
        return value.strip()
    return None


def _uid(value: object) -> str | None:
    text = str(value).strip().rstrip("\x00") if value is not None else ""
    return text if len(text) <= 64 and _UID.fullmatch(text) else None
