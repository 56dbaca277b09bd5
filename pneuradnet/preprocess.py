"""Turning a decoded image into model input exactly as the model was trained: colour, resize, scaling."""

import numpy as np
from PIL import Image

from pneuradnet.manifest import ModelManifest, Resize, Scaling

_RESAMPLING = {
    Resize.NEAREST: Image.Resampling.NEAREST,
    Resize.BILINEAR: Image.Resampling.BILINEAR,
    Resize.BICUBIC: Image.Resampling.BICUBIC,
    Resize.LANCZOS: Image.Resampling.LANCZOS,
}


def to_model_input(image: Image.Image, manifest: ModelManifest) -> np.ndarray:
    """One image as a float32 array of shape (height, width, channels).

    Colour conversion comes before the resize, as in Keras' `load_img`, which trained both shipped models.
    """
    spec = manifest.input
    image = image.convert("RGB" if spec.channels == 3 else "L")
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), _RESAMPLING[manifest.resize])
    pixels = np.asarray(image, dtype=np.float32)
    if spec.channels == 1:
        pixels = pixels[..., np.newaxis]
    return scale_pixels(pixels, manifest.scaling)


def scale_pixels(pixels: np.ndarray, scaling: Scaling) -> np.ndarray:
    if scaling is Scaling.MINUS_ONE_TO_ONE:
        return pixels / np.float32(127.5) - np.float32(1.0)
    if scaling is Scaling.UNIT:
        return pixels / np.float32(255.0)
    return pixels


def nearest_sample_points(source: int, target: int) -> np.ndarray:
    """The source columns (or rows) Pillow's NEAREST resize of `source` pixels to `target` reads, in order: a
    NEAREST resize of an image is its pixels at these rows and columns, bit for bit, so an image that is only to be
    resized need only be computed there (pneuradnet.dicom). Asked of Pillow itself, on a ramp of indices, so that
    it is right whatever arithmetic Pillow's resize uses (a scale of one row or column maps each axis on its own)."""
    ramp = Image.fromarray(np.arange(source, dtype=np.int32)[np.newaxis, :])  # mode I: indices, unrounded
    points: np.ndarray = np.asarray(ramp.resize((target, 1), Image.Resampling.NEAREST))[0].astype(np.intp)
    return points
