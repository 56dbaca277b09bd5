"""Decoding uploaded bytes into an upright 8-bit Pillow image, or a clear InvalidImageError."""

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneuradnet.errors import InvalidImageError

ACCEPTED_FORMATS = ("PNG", "JPEG")
"""Formats Pillow decodes for the service; DICOM, recognised by its marker, is decoded by pneuradnet.dicom."""

ACCEPTED = "PNG, JPEG or DICOM"
"""What error messages tell a person to send."""

DICOM_MARKER = b"DICM"
"""What a DICOM file (PS3.10) holds after its 128-byte preamble, whatever the file is named."""

DICOM_MARKER_OFFSET = 128

SOURCE_INFO = "source"
"""Key of `image.info` where decode_image leaves non-identifying facts about the file (for DICOM only, so far)."""

SAMPLED_FROM = "sampled_from"
"""Key of `image.info` where decode_image, asked for a NEAREST sample of the image (`sample_to`), leaves the
(width, height) of the whole image it sampled."""

MAX_PIXELS = 50_000_000
"""Largest image accepted (width x height); a 14x17 inch detector at 100 µm is about 24 Mpx."""

MAX_SIDE = 16_384
"""Longest side accepted, in pixels."""

MIN_SIDE = 64
"""Shortest side a classifier accepts, in pixels: below it an image is an icon or a thumbnail, not a radiograph
(the default model reads 150x150; a 1x1 image would be stretched to that and classified as if it meant something)."""

MAX_ASPECT_RATIO = 4.0
"""Longest side over shortest side a classifier accepts: chest radiographs are near 1:1 (detectors are 14x17
or 17x17 inches); a strip of 5:1 or more is a banner or a cropped fragment."""


@dataclass(frozen=True)
class ShapeLimits:
    """The smallest and the most elongated image a classifier accepts (decoding alone accepts any)."""

    min_side: int = MIN_SIDE
    max_aspect_ratio: float = MAX_ASPECT_RATIO

    def __post_init__(self) -> None:
        if self.min_side < 1:
            raise ValueError(f"min_side must be at least 1, got {self.min_side}")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"max_aspect_ratio must be at least 1, got {self.max_aspect_ratio}")

    def check(self, width: int, height: int) -> None:
        """Refuse an image too small or too elongated to be a radiograph, with its size and the limit."""
        if min(width, height) < self.min_side:
            raise InvalidImageError(f"image is {width}x{height}, too small for a radiograph: the minimum is "
                                    f"{self.min_side} pixels on each side")
        ratio = max(width, height) / min(width, height)
        if ratio > self.max_aspect_ratio:
            raise InvalidImageError(f"image is {width}x{height}, an aspect ratio of {ratio:.1f}:1, too elongated "
                                    f"for a radiograph: the most accepted is {self.max_aspect_ratio:g}:1")


RADIOGRAPH_SHAPE = ShapeLimits()
"""The default: at least MIN_SIDE on each side, at most MAX_ASPECT_RATIO."""

_MODES_KEPT = ("L", "RGB")

# decode_image checks the size itself, from the header, before any pixel is decoded; Pillow's own global
# check would answer first, for large bombs, with a message that does not give the image's size.
Image.MAX_IMAGE_PIXELS = None


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
                 sample_to: tuple[int, int] | None = None) -> Image.Image:
    """Decode PNG, JPEG or DICOM bytes into an upright image in mode `L` or `RGB`.

    16-bit grayscale is stretched to 8 bits over its own range (a 12-bit detector would otherwise be
    nearly black); palette, CMYK and alpha images become RGB as Keras' `load_img` makes them. DICOM is
    recognised by its marker and shown as a viewer shows it (see pneuradnet.dicom.decode_dicom).

    `sample_to` (width, height): the image is only to be resized there with NEAREST. A grayscale DICOM then comes
    already resized, its display computed at the sample points alone (bit for bit the same pixels); source_size()
    tells the whole image's size. Other images come whole.
    """
    if not data:
        raise InvalidImageError("the file is empty")
    if is_dicom(data):
        return _decode_dicom(data, max_pixels=max_pixels, max_side=max_side, sample_to=sample_to)
    image = _open(data)
    check_size(*image.size, max_pixels=max_pixels, max_side=max_side)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(_describe_load_failure(image.format, error)) from error
    return _to_8_bit(image)


def is_dicom(data: bytes) -> bool:
    return data[DICOM_MARKER_OFFSET:DICOM_MARKER_OFFSET + len(DICOM_MARKER)] == DICOM_MARKER


def check_size(width: int, height: int, *, max_pixels: int, max_side: int) -> None:
    """Refuse an image too large to decode, from the size its header declares."""
    if width * height > max_pixels or max(width, height) > max_side:
        raise InvalidImageError(
            f"image is {width}x{height}, the limit is {max_pixels:,} pixels and {max_side:,} on a side"
        )


def source_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the image decode_image decoded: the whole one's, when it answered a sample of it."""
    sampled_from: tuple[int, int] = image.info.get(SAMPLED_FROM, image.size)
    return sampled_from


def _decode_dicom(data: bytes, *, max_pixels: int, max_side: int,
                  sample_to: tuple[int, int] | None) -> Image.Image:
    try:
        from pneuradnet.dicom import decode_dicom  # only when a DICOM comes: pydicom is optional, and slow to load
    except ImportError as error:
        raise InvalidImageError("DICOM files cannot be decoded here: pydicom is not installed "
                                "(the pneuradnet[dicom] extra)") from error
    return decode_dicom(data, max_pixels=max_pixels, max_side=max_side, sample_to=sample_to)


def _open(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(f"not an image: send {ACCEPTED}") from error
    if image.format not in ACCEPTED_FORMATS:
        raise InvalidImageError(f"{image.format} images are not accepted: send {ACCEPTED}")
    return image


def _describe_load_failure(image_format: str | None, error: Exception) -> str:
    if "truncated" in str(error).lower():
        return f"truncated {image_format}: the file ends before the image data does"
    return f"the {image_format} data is corrupt and cannot be decoded ({error})"


def _to_8_bit(image: Image.Image) -> Image.Image:
    if image.mode in _MODES_KEPT:
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _stretch_to_8_bit(np.asarray(image))
    if image.mode in ("1", "LA"):
        return image.convert("L")
    return image.convert("RGB")


def _stretch_to_8_bit(pixels: np.ndarray) -> Image.Image:
    pixels = pixels.astype(np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    if high == low:
        scaled = np.zeros(pixels.shape, dtype=np.uint8)
    else:
        scaled = np.rint((pixels - low) * (255.0 / (high - low))).astype(np.uint8)
    return Image.fromarray(scaled)
