"""DICOM files written here with pydicom from the real radiographs: decoded as a viewer shows them, classified
as their source JPEG is, refused with a clear reason, and never leaking who the patient is."""

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG2MPML,
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from pneuradnet.cli.common import find_images
from pneuradnet.dicom import FACTS
from pneuradnet.errors import InvalidImageError
from pneuradnet.images import MAX_PIXELS, SOURCE_INFO, decode_image

NORMAL = "NORMAL2-IM-1430-0001"
PNEUMONIA = "person1951_bacteria_4882"

STUDY_UID = "1.2.826.0.1.3680043.8.498.135792468"
IDENTIFYING = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-4711-XYZ",
    "PatientBirthDate": "19700101",
    "StudyDate": "20240229",
    "InstitutionName": "St Example Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "AccessionNumber": "ACC-998877",
    "StudyInstanceUID": STUDY_UID,
}
"""Set in every file written here; none of it may reach a result, an error message or a log."""

LEAK_MARKERS = ["Doe", "Jane", "4711", "19700101", "20240229", "Example Hospital", "House", "Gregory", "998877"]
"""Pieces of IDENTIFYING that nothing else here contains (results carry the study UID: it holds none of them)."""

ALLOWED_SOURCE_KEYS = {"format", *FACTS, "frame_used"}


def dicom_file(frames: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 8,
               syntax: UID = ExplicitVRLittleEndian, **elements) -> bytes:
    """A DX file of `frames` (one frame, or several stacked on the first axis) as a PACS would export it."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.SOPInstanceUID = generate_uid()
    with disable_value_validation():  # set as given, odd values included
        for keyword, value in {"Modality": "DX", "ViewPosition": "PA", **IDENTIFYING, **elements}.items():
            setattr(dataset, keyword, value)
    dataset.set_pixel_data(frames, photometric_interpretation=photometric, bits_stored=bits_stored)
    if syntax != ExplicitVRLittleEndian:
        dataset.compress(syntax, encoding_plugin="pylibjpeg")  # pydicom's own RLE encoder is 15 times slower
    return save(dataset)


def save(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    with disable_value_validation():
        dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def wrapped_jpeg(jpeg: bytes, gray: np.ndarray) -> bytes:
    """The JPEG itself as the pixel data of a JPEG Baseline file, as a PACS stores a JPEG it received."""
    dataset = dcmread(io.BytesIO(dicom_file(gray)))  # a native file's header, with its pixel data replaced
    dataset.PixelData = encapsulate([jpeg])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return save(dataset)


@pytest.fixture(scope="module")
def sources(radiographs) -> dict[str, tuple[bytes, np.ndarray]]:
    """Stem -> (the JPEG's bytes, its pixels as decode_image gives them: 8-bit grayscale)."""
    by_stem = {path.stem: path for path in radiographs}
    found = {}
    for stem in (NORMAL, PNEUMONIA):
        jpeg = by_stem[stem].read_bytes()
        image = decode_image(jpeg)
        assert image.mode == "L"  # the radiographs are grayscale JPEGs: each variant below is made from L pixels
        found[stem] = (jpeg, np.asarray(image))
    return found


def other_frame(gray: np.ndarray, other: np.ndarray) -> np.ndarray:
    """`other` radiograph at the size of `gray`, to be a second frame that must not be classified."""
    return np.asarray(Image.fromarray(other).resize((gray.shape[1], gray.shape[0])))


def variants(jpeg: bytes, gray: np.ndarray, other: np.ndarray) -> dict[str, bytes]:
    """The same radiograph as DICOM in every way tested, each decoding to the pixels of `gray`
    (JPEG Baseline within one grey level)."""
    return {
        "MONOCHROME2 8-bit": dicom_file(gray),
        "MONOCHROME1": dicom_file(255 - gray, photometric="MONOCHROME1"),
        # 12 bits stored: 8g + 500; rescaled: 2 (8g + 500) - 1000 = 16g; the first window maps 0..4080 onto
        # black..white exactly, the second would clip most of the image.
        "16-bit rescaled and windowed": dicom_file(
            gray.astype(np.uint16) * 8 + 500, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000,
            WindowCenter=[2040.5, 300], WindowWidth=[4081, 600]),
        "RLE Lossless": dicom_file(gray, syntax=RLELossless),
        "JPEG 2000 Lossless": dicom_file(gray, syntax=JPEG2000Lossless),
        "JPEG Baseline": wrapped_jpeg(jpeg, gray),
        "RGB": dicom_file(np.stack([gray] * 3, axis=-1), photometric="RGB"),
        "multi-frame": dicom_file(np.stack([gray, other_frame(gray, other)])),
    }


@pytest.fixture(scope="module")
def dicoms(sources) -> dict[str, dict[str, bytes]]:
    """Stem -> variant name -> DICOM bytes; the multi-frame file's second frame is the other radiograph."""
    (normal_jpeg, normal), (pneumonia_jpeg, pneumonia) = sources[NORMAL], sources[PNEUMONIA]
    return {NORMAL: variants(normal_jpeg, normal, pneumonia), PNEUMONIA: variants(pneumonia_jpeg, pneumonia, normal)}


VARIANTS = ["MONOCHROME2 8-bit", "MONOCHROME1", "16-bit rescaled and windowed", "RLE Lossless",
            "JPEG 2000 Lossless", "JPEG Baseline", "RGB", "multi-frame"]


def test_the_dicom_marker_is_all_that_is_needed_to_be_read_as_dicom(dicoms):
    data = dicoms[NORMAL]["MONOCHROME2 8-bit"]
    assert data[128:132] == b"DICM"

    assert decode_image(data).info[SOURCE_INFO]["format"] == "DICOM"


# --- what the pixels become ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_decodes_to_the_pixels_of_its_source_jpeg(sources, dicoms, variant):
    _, gray = sources[NORMAL]

    image = decode_image(dicoms[NORMAL][variant])

    pixels = np.asarray(image.convert("L"))
    assert image.mode == ("RGB" if variant == "RGB" else "L")
    assert image.size == (gray.shape[1], gray.shape[0])
    if variant == "JPEG Baseline":  # decoded by pydicom's JPEG plugin, not Pillow's: IDCT rounding may differ
        assert np.abs(pixels.astype(int) - gray).max() <= 1
    else:
        assert np.array_equal(pixels, gray)


def test_the_first_window_is_used_when_there_are_several():
    ramp = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)  # 0..4080
    data = dicom_file(ramp, bits_stored=12, WindowCenter=[1000.5, 3000], WindowWidth=[1001, 10])

    pixels = np.asarray(decode_image(data)).ravel().astype(int)

    # LINEAR window 1000.5/1001: 500 is black, 1500 white, and linear between (PS3.3 C.11.2.1.2.1).
    expected = np.rint(np.clip((ramp.ravel().astype(int) - 500) / 1000, 0, 1) * 255)
    assert np.array_equal(pixels, expected)


def test_a_voi_lut_is_applied_and_shown_over_its_output_range():
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [256, 0, 16])
    lut.add_new("LUTData", "US", [min(value * 4, 600) + 100 for value in range(256)])  # 100..700, flat above 150
    data = dicom_file(ramp, VOILUTSequence=[lut], WindowCenter=10, WindowWidth=5)  # the LUT is preferred

    pixels = np.asarray(decode_image(data)).ravel().astype(int)

    expected = np.rint((np.minimum(np.arange(256) * 4, 600)) / 600 * 255)
    assert np.array_equal(pixels, expected)


def test_without_a_window_the_data_is_shown_over_its_own_range():
    ramp = np.linspace(1000, 3000, 256).astype(np.uint16).reshape(16, 16)  # a 12-bit detector's values

    pixels = np.asarray(decode_image(dicom_file(ramp, bits_stored=12)))

    assert pixels.min() == 0 and pixels.max() == 255
    assert np.all(np.diff(pixels.ravel().astype(int)) >= 0)


def test_monochrome1_is_inverted_so_that_bone_is_bright():
    dark_background = np.zeros((8, 8), np.uint8)
    dark_background[2:6, 2:6] = 200  # MONOCHROME1: low values are white, so the square is darker than the rest

    pixels = np.asarray(decode_image(dicom_file(dark_background, photometric="MONOCHROME1")))

    assert pixels[0, 0] == 255 and pixels[3, 3] == 0


def test_a_multi_frame_file_says_its_first_frame_was_used(dicoms):
    source = decode_image(dicoms[NORMAL]["multi-frame"]).info[SOURCE_INFO]

    assert source["frames"] == 2
    assert source["frame_used"] == 1


def test_the_source_facts_are_the_allowed_ones_and_nothing_else(sources, dicoms):
    _, gray = sources[NORMAL]

    data = dicoms[NORMAL]["16-bit rescaled and windowed"]
    header = dcmread(io.BytesIO(data), stop_before_pixels=True)

    source = decode_image(data).info[SOURCE_INFO]

    assert source == {"format": "DICOM", "modality": "DX", "view_position": "PA", "rows": gray.shape[0],
                      "columns": gray.shape[1], "frames": 1, "frame_used": 1,
                      "photometric_interpretation": "MONOCHROME2", "bits_stored": 12,
                      "study_instance_uid": STUDY_UID, "series_instance_uid": None,  # the file has none
                      "sop_instance_uid": header.SOPInstanceUID,
                      "sop_class_uid": DigitalXRayImageStorageForPresentation}


def test_the_uids_name_the_image_and_a_value_that_is_not_a_uid_is_left_out():
    series = generate_uid()

    named = decode_image(dicom_file(np.zeros((4, 4), np.uint8), SeriesInstanceUID=series)).info[SOURCE_INFO]
    garbled = decode_image(dicom_file(np.zeros((4, 4), np.uint8), SeriesInstanceUID="Doe^Jane")).info[SOURCE_INFO]

    assert named["series_instance_uid"] == series and named["study_instance_uid"] == STUDY_UID
    assert garbled["series_instance_uid"] is None


def test_a_fact_that_is_not_a_code_string_is_left_out():
    data = dicom_file(np.zeros((4, 4), np.uint8), ViewPosition="Doe^Jane was here")  # 17 characters, with ^

    assert decode_image(data).info[SOURCE_INFO]["view_position"] is None


def test_png_and_jpeg_carry_no_source(sources):
    jpeg, _ = sources[NORMAL]

    assert SOURCE_INFO not in decode_image(jpeg).info


# --- what is refused, and why ----------------------------------------------------------------------------------


def test_a_dicom_without_pixel_data():
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.SOPInstanceUID = generate_uid()
    dataset.PatientName = IDENTIFYING["PatientName"]

    with pytest.raises(InvalidImageError, match=r"^the DICOM file has no pixel data \(Digital X-Ray Image Storage "
                                                r"- For Presentation\): it is not an image, or it is truncated$"):
        decode_image(save(dataset))


def test_a_transfer_syntax_that_cannot_be_decoded_is_named(dicoms):
    dataset = dcmread(io.BytesIO(dicoms[NORMAL]["MONOCHROME2 8-bit"]))
    dataset.PixelData = encapsulate([b"\x00\x00\x01\xb3 an MPEG-2 stream"])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = MPEG2MPML

    with pytest.raises(InvalidImageError, match=r"^DICOM transfer syntax MPEG2 Main Profile / Main Level "
                                                r"\(1\.2\.840\.10008\.1\.2\.4\.100\) cannot be decoded here$"):
        decode_image(save(dataset))


@pytest.mark.parametrize("keep", range(140, 900, 7))  # every few bytes through the file meta and the header
def test_a_truncated_header(dicoms, keep):
    data = dicoms[NORMAL]["MONOCHROME2 8-bit"]

    # Cut in the file meta, the header cannot be read; later, the cut is seen, or (cut between two elements)
    # the pixel data is found missing.
    with pytest.raises(InvalidImageError, match=r"^the DICOM (header is corrupt and cannot be read"
                                                r"|file is truncated: it ends before its data does"
                                                r"|file has no pixel data .*, or it is truncated)$"):
        decode_image(data[:keep])


def test_a_header_of_noise():
    noise = np.random.default_rng(0).integers(0, 256, 2_000, dtype=np.uint8).tobytes()

    with pytest.raises(InvalidImageError, match=r"^the DICOM header is corrupt and cannot be read$"):
        decode_image(bytes(128) + b"DICM" + noise)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")  # pydicom's, on a cut encapsulation
@pytest.mark.parametrize("variant", ["MONOCHROME2 8-bit", "RLE Lossless", "JPEG 2000 Lossless"])
def test_truncated_pixel_data(dicoms, variant):
    data = dicoms[NORMAL][variant]

    with pytest.raises(InvalidImageError, match=r"^the DICOM file is truncated: it ends before its data does$"):
        decode_image(data[: len(data) - 1000])


def test_corrupt_pixel_data(dicoms):
    dataset = dcmread(io.BytesIO(dicoms[NORMAL]["RLE Lossless"]))
    dataset.PixelData = encapsulate([bytes(64) + b"not RLE segments"])  # an RLE header of no segments
    dataset["PixelData"].VR = "OB"

    with pytest.raises(InvalidImageError, match=r"^the DICOM pixel data is corrupt and cannot be decoded$"):
        decode_image(save(dataset))


def test_the_size_limits_apply_before_the_pixel_data_is_decoded():
    dataset = dcmread(io.BytesIO(dicom_file(np.zeros((8, 8), np.uint8))))
    dataset.Rows, dataset.Columns = 60_000, 60_000  # 3.6 Gpx promised by a file of a few hundred bytes

    with pytest.raises(InvalidImageError, match=f"^image is 60000x60000, the limit is {MAX_PIXELS:,} pixels"):
        decode_image(save(dataset))


def test_a_photometric_interpretation_that_is_not_grayscale_or_rgb_is_named():
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.SOPInstanceUID = generate_uid()
    dataset.set_pixel_data(np.zeros((4, 4), np.uint8), photometric_interpretation="PALETTE COLOR", bits_stored=8,
                           generate_instance_uid=False)

    with pytest.raises(InvalidImageError, match="DICOM photometric interpretation PALETTE COLOR is not accepted"):
        decode_image(save(dataset))


def test_an_invalid_header_value_is_refused_without_being_quoted():
    data = dicom_file(np.zeros((8, 8), np.uint8), RescaleSlope="9.999999", RescaleIntercept=0)
    data = data.replace(b"9.999999", b"Doe^Jane")  # a name where a number belongs, as a broken exporter writes

    invalid = r"^the DICOM file cannot be decoded: its header holds an invalid value \(\w+\)$"
    with pytest.raises(InvalidImageError, match=invalid) as refused:
        decode_image(data)
    assert "Doe" not in str(refused.value)


def test_the_cli_finds_dicom_files_in_folders(tmp_path: Path):
    for name in ("a.dcm", "b.DICOM", "c.jpeg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")

    assert [path.name for path in find_images([tmp_path])] == ["a.dcm", "b.DICOM", "c.jpeg"]


# --- with the real model ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classified(default_classifier, sources, dicoms) -> Callable[[str], dict]:
    """stem -> {"jpeg" or variant name: Prediction}, every file of the stem classified in one call."""
    outcomes = {}
    for stem, files in dicoms.items():
        names = ["jpeg", *files]
        results = default_classifier.classify([("source.jpeg", sources[stem][0]), *files.items()])
        assert not [r for r in results if isinstance(r, InvalidImageError)]
        outcomes[stem] = dict(zip(names, results, strict=True))
    return outcomes.__getitem__


@pytest.mark.model
@pytest.mark.parametrize("stem", [NORMAL, PNEUMONIA])
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_is_classified_as_its_source_jpeg(classified, stem, variant):
    predictions = classified(stem)
    jpeg, dicom = predictions["jpeg"], predictions[variant]

    assert jpeg.predicted_class == ("NORMAL" if stem == NORMAL else "PNEUMONIA")
    assert dicom.predicted_class == jpeg.predicted_class
    # The same pixels, but JPEG Baseline's: pydicom's JPEG decoder rounds 3% of them one grey level apart.
    np.testing.assert_allclose(dicom.predictions, jpeg.predictions, atol=1e-2 if variant == "JPEG Baseline" else 1e-3)
    assert set(dicom.source) <= ALLOWED_SOURCE_KEYS
    assert jpeg.source is None


@pytest.mark.model
@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_no_identifying_header_value_reaches_a_result_an_error_or_a_log(default_classifier, dicoms, caplog):
    caplog.set_level(logging.DEBUG)
    # A name where a view position belongs: pydicom's warning about such a value would quote it.
    files = {**dicoms[NORMAL], "view": dicom_file(np.zeros((64, 64), np.uint8), ViewPosition="Doe^Jane was here")}
    broken = [("truncated.dcm", files["MONOCHROME2 8-bit"][:700]),
              ("truncated-pixels.dcm", files["RLE Lossless"][:-1000])]

    outcomes = default_classifier.classify([*files.items(), *broken])

    records = [o.to_dict() for o in outcomes if not isinstance(o, InvalidImageError)]
    errors = [str(o) for o in outcomes if isinstance(o, InvalidImageError)]
    assert len(records) == len(files) and len(errors) == len(broken)
    assert all(set(record["source"]) <= ALLOWED_SOURCE_KEYS for record in records)
    published = json.dumps(records) + json.dumps(errors) + caplog.text
    assert [marker for marker in LEAK_MARKERS if marker in published] == []
