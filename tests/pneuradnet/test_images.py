import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pneuradnet.errors import InvalidImageError
from pneuradnet.images import MAX_PIXELS, MAX_SIDE, RADIOGRAPH_SHAPE, ShapeLimits, decode_image


def with_declared_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR claiming width x height (CRC fixed): a few bytes that promise a huge image."""
    ihdr = bytearray(png[8:33])  # length, b"IHDR", 13 bytes of data, CRC
    assert ihdr[4:8] == b"IHDR"
    ihdr[8:16] = struct.pack(">II", width, height)
    ihdr[21:25] = struct.pack(">I", zlib.crc32(bytes(ihdr[4:21])))
    return png[:8] + bytes(ihdr) + png[33:]


def noise(mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> Image.Image:
    channels = {"L": (), "RGB": (3,)}[mode]
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], *channels), dtype=np.uint8)
    return Image.fromarray(pixels)


# --- what is refused, and why ----------------------------------------------------------------------------------


def test_empty_bytes():
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image(b"")


def test_text_is_not_an_image():
    with pytest.raises(InvalidImageError, match="not an image: send PNG, JPEG or DICOM"):
        decode_image(b"patient: 42\nfindings: none\n")


def test_pdf_is_not_an_image():
    with pytest.raises(InvalidImageError, match="not an image"):
        decode_image(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


def test_truncated_jpeg(encode):
    jpeg = encode(noise(), "JPEG")

    with pytest.raises(InvalidImageError, match="truncated JPEG"):
        decode_image(jpeg[: len(jpeg) // 2])


def test_truncated_png(encode):
    png = encode(noise(), "PNG")

    with pytest.raises(InvalidImageError, match="truncated PNG"):
        decode_image(png[: len(png) // 2])


def test_decompression_bomb_is_refused_before_decoding(encode):
    bomb = with_declared_size(encode(Image.new("L", (8, 8)), "PNG"), 60_000, 60_000)
    assert len(bomb) < 1_000

    with pytest.raises(InvalidImageError, match=f"image is 60000x60000, the limit is {MAX_PIXELS:,} pixels"):
        decode_image(bomb)


def test_too_many_pixels_names_the_size_and_the_limit(encode):
    png = with_declared_size(encode(Image.new("L", (8, 8)), "PNG"), 10_000, 6_000)  # 60 Mpx > 50 Mpx

    with pytest.raises(InvalidImageError, match=f"image is 10000x6000, the limit is {MAX_PIXELS:,} pixels"):
        decode_image(png)


def test_too_long_a_side(encode):
    png = encode(Image.new("L", (MAX_SIDE + 1, 1)), "PNG")  # a real, tiny, very wide image

    with pytest.raises(InvalidImageError, match=f"image is {MAX_SIDE + 1}x1"):
        decode_image(png)


def test_the_limits_can_be_lowered(encode):
    with pytest.raises(InvalidImageError, match="the limit is 100 pixels"):
        decode_image(encode(Image.new("L", (20, 20)), "PNG"), max_pixels=100)


@pytest.mark.parametrize(("image_format", "mode"), [("GIF", "P"), ("TIFF", "L"), ("WEBP", "RGB"), ("BMP", "RGB")])
def test_other_formats_are_named_and_refused(encode, image_format, mode):
    data = encode(Image.new(mode, (16, 16)), image_format)

    with pytest.raises(InvalidImageError, match=f"{image_format} images are not accepted: send PNG, JPEG or DICOM"):
        decode_image(data)


# --- what is accepted, and what it becomes ---------------------------------------------------------------------


def test_grayscale_stays_grayscale_and_unchanged(encode):
    original = noise("L")

    decoded = decode_image(encode(original, "PNG"))

    assert decoded.mode == "L"
    assert np.array_equal(np.asarray(decoded), np.asarray(original))


def test_rgb_stays_rgb_and_unchanged(encode):
    original = noise("RGB")

    decoded = decode_image(encode(original, "PNG"))

    assert decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), np.asarray(original))


def test_rgba_becomes_rgb_keeping_the_colour(encode):
    decoded = decode_image(encode(Image.new("RGBA", (8, 8), (200, 100, 50, 128)), "PNG"))

    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == (200, 100, 50)


def test_palette_becomes_rgb_with_the_palette_colours(encode):
    image = Image.new("P", (8, 8))
    image.putpalette([0, 0, 0, 255, 0, 0])
    image.putpixel((3, 3), 1)

    decoded = decode_image(encode(image, "PNG"))

    assert decoded.mode == "RGB"
    assert decoded.getpixel((3, 3)) == (255, 0, 0)
    assert decoded.getpixel((0, 0)) == (0, 0, 0)


def test_cmyk_jpeg_becomes_rgb(encode):
    decoded = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"))  # red ink

    assert decoded.mode == "RGB"
    red, green, blue = decoded.getpixel((8, 8))
    assert red > 240 and green < 15 and blue < 15


def test_16_bit_grayscale_is_stretched_over_its_own_range(encode):
    # A 12-bit detector's values: 1000..3000 of 65535. Shifted to 8 bits it would be nearly black.
    ramp = np.linspace(1000, 3000, 64 * 16).reshape(16, 64).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"

    pixels = np.asarray(decode_image(data))

    assert pixels.dtype == np.uint8
    assert pixels.min() == 0 and pixels.max() == 255  # the whole range is used: not clipped, not darkened
    assert pixels[0, 0] == 0 and pixels[-1, -1] == 255
    assert np.all(np.diff(pixels.ravel().astype(int)) >= 0)  # the ramp stays a ramp


def test_16_bit_image_of_one_value_is_black_not_an_error(encode):
    pixels = np.asarray(decode_image(encode(Image.fromarray(np.full((8, 8), 2000, np.uint16)), "PNG")))

    assert pixels.max() == 0


def test_exif_orientation_is_applied(encode):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": how phones store portrait photos
    data = encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif)

    assert decode_image(data).size == (20, 40)


def test_real_radiograph_decodes_as_8_bit_grayscale(radiograph):
    image = decode_image(radiograph("NORMAL2-IM-1430-0001").read_bytes())

    assert image.mode == "L"
    assert image.size == (1272, 1040)


@pytest.mark.parametrize(("size", "reason"), [
    ((1, 1), "image is 1x1, too small for a radiograph: the minimum is 64 pixels on each side"),
    ((300, 63), "image is 300x63, too small for a radiograph"),
    ((1000, 200), "image is 1000x200, an aspect ratio of 5.0:1, too elongated for a radiograph: the most accepted "
                  "is 4:1"),
])
def test_an_image_too_small_or_elongated_for_a_radiograph_is_refused_with_its_size(size, reason):
    with pytest.raises(InvalidImageError, match=re.escape(reason)):
        RADIOGRAPH_SHAPE.check(*size)


@pytest.mark.parametrize("size", [(64, 64), (2000, 2500), (400, 100)])
def test_radiograph_shapes_pass(size):
    RADIOGRAPH_SHAPE.check(*size)


def test_the_shape_limits_are_settings():
    ShapeLimits(min_side=8, max_aspect_ratio=10).check(80, 8)
    with pytest.raises(InvalidImageError, match="the minimum is 512 pixels"):
        ShapeLimits(min_side=512).check(500, 600)
    with pytest.raises(ValueError, match="max_aspect_ratio must be at least 1"):
        ShapeLimits(max_aspect_ratio=0.5)
