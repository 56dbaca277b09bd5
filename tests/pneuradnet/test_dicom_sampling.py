"""The fast path for full-size DICOM: displayed only at the pixels the model's NEAREST resize reads, bit for bit
what the whole display resized gives (pneuradnet.dicom, pneuradnet.preprocess.nearest_sample_points)."""

import io

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, RLELossless, generate_uid

from pneuradnet.images import SAMPLED_FROM, decode_image, source_size
from pneuradnet.manifest import load_manifest
from pneuradnet.preprocess import nearest_sample_points, to_model_input

MODEL_SIDE = (150, 150)
"""The default model's input (width, height), which it reaches with a NEAREST resize."""


def frame_file(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
               compress: bool = False, **elements: object) -> bytes:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.SOPInstanceUID = generate_uid()
    dataset.Modality = "DX"
    dataset.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits_stored)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    if compress:
        dataset.compress(RLELossless, encoding_plugin="pylibjpeg")
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def detector(rows: int, columns: int, *, seed: int = 1, signed: bool = False) -> np.ndarray:
    """12-bit detector values: shading plus noise, every value different from its neighbours'."""
    generator = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    values = 1800 + 900 * np.sin(x / columns * np.pi) * np.cos(y / rows) + generator.normal(0, 60, (rows, columns))
    values = np.clip(values, 0, 4095)
    return (values - 2048).astype(np.int16) if signed else values.astype(np.uint16)


@pytest.mark.parametrize(("source", "target"), [(3000, 150), (2500, 150), (151, 150), (150, 150), (97, 150),
                                                (1023, 224), (7, 3)])
def test_the_sample_points_are_the_pixels_pillow_s_nearest_resize_reads(source: int, target: int):
    image = np.random.default_rng(source).integers(0, 2**31, (source, source), dtype=np.int32)
    points = nearest_sample_points(source, target)

    resized = np.asarray(Image.fromarray(image).resize((target, target), Image.Resampling.NEAREST))

    assert np.array_equal(image[np.ix_(points, points)], resized)


CASES = {
    "window, MONOCHROME2": dict(WindowCenter=1800, WindowWidth=1200),
    "window, MONOCHROME1": dict(photometric="MONOCHROME1", WindowCenter=1800, WindowWidth=1200),
    "sigmoid window and rescale": dict(WindowCenter=900, WindowWidth=2000, VOILUTFunction="SIGMOID",
                                       RescaleSlope=0.5, RescaleIntercept=-10),
    "no window: the data's range": dict(),
    "no window, negative rescale": dict(RescaleSlope=-1.5, RescaleIntercept=4000),
    "signed, no window": dict(signed=True),
    "RLE, window": dict(compress=True, WindowCenter=2000, WindowWidth=3000),
}


def _file(case: dict[str, object], rows: int, columns: int) -> bytes:
    elements = dict(case)
    signed = bool(elements.pop("signed", False))
    return frame_file(detector(rows, columns, signed=signed), **elements)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(("rows", "columns"), [(3000, 2500), (1024, 1024), (149, 151), (300, 97)])
def test_a_sampled_display_is_the_whole_display_resized(name: str, rows: int, columns: int):
    data = _file(CASES[name], rows, columns)

    whole = decode_image(data)
    sampled = decode_image(data, sample_to=MODEL_SIDE)

    assert sampled.size == MODEL_SIDE and sampled.mode == whole.mode == "L"
    assert sampled.info[SAMPLED_FROM] == source_size(sampled) == (columns, rows) == whole.size
    assert np.array_equal(np.asarray(sampled), np.asarray(whole.resize(MODEL_SIDE, Image.Resampling.NEAREST)))


def test_a_voi_lut_or_modality_lut_is_sampled_exactly():
    voi = Dataset()
    voi.add_new("LUTDescriptor", "US", [4096, 0, 16])
    voi.add_new("LUTData", "US", [min(value * 24, 65535) for value in range(4096)])  # flat above 2730
    modality = Dataset()
    modality.add_new("LUTDescriptor", "US", [4096, 0, 16])
    modality.add_new("LUTData", "US", list(range(4095, -1, -1)))  # inverted: its extremes are not the frame's
    modality.ModalityLUTType = "US"
    for elements in ({"VOILUTSequence": [voi]}, {"ModalityLUTSequence": [modality]}):
        data = frame_file(detector(1200, 1000), **elements)  # type: ignore[arg-type]
        whole = decode_image(data).resize(MODEL_SIDE, Image.Resampling.NEAREST)
        assert np.array_equal(np.asarray(decode_image(data, sample_to=MODEL_SIDE)), np.asarray(whole))


def test_the_model_input_is_the_same_through_either_path():
    manifest = load_manifest("default")  # the real model's: 150x150, RGB, NEAREST, scaled to -1..1
    data = _file(CASES["window, MONOCHROME2"], 3000, 2500)

    fast = to_model_input(decode_image(data, sample_to=(manifest.input.width, manifest.input.height)), manifest)
    reference = to_model_input(decode_image(data), manifest)

    assert fast.dtype == reference.dtype and np.array_equal(fast, reference)


def test_colour_is_decoded_whole():
    rgb = np.random.default_rng(3).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    image = decode_image(frame_file(rgb, photometric="RGB", bits_stored=8), sample_to=MODEL_SIDE)
    assert image.size == (200, 300) and SAMPLED_FROM not in image.info


@pytest.mark.model
def test_the_classifier_prepares_a_full_size_dicom_as_the_whole_display_would(default_classifier):
    data = _file(CASES["window, MONOCHROME1"], 3000, 2500)

    prepared = default_classifier.prepare("a.dcm", data)

    assert np.array_equal(prepared.pixels, to_model_input(decode_image(data), default_classifier.manifest))
    assert prepared.source["rows"] == 3000 and prepared.source["columns"] == 2500
