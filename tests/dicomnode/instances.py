"""DICOM instances for the node's tests and bench/dicom.py, made with pydicom: the real radiographs as CR or DX
files of one study, a full-size 16-bit DX, and other SOP classes the node refuses."""

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-4711-XYZ", "PatientBirthDate": "19610203",
           "AccessionNumber": "ACC-99887766"}
"""Who every test instance is about: none of these values may leave DICOM."""


def instance(pixels: np.ndarray, *, study_uid: str, sop_class: str = DigitalXRayImageStorageForPresentation,
             bits_stored: int = 8, syntax: str = ExplicitVRLittleEndian, window: tuple[float, float] | None = None,
             photometric: str = "MONOCHROME2") -> Dataset:
    """A single-frame grayscale instance of `study_uid` with these pixels, about PATIENT."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = {ComputedRadiographyImageStorage: "CR", CTImageStorage: "CT"}.get(UID(sop_class), "DX")
    dataset.ViewPosition = "PA"
    for keyword, value in PATIENT.items():
        setattr(dataset, keyword, value)
    dataset.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits_stored)
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    if syntax == RLELossless:
        dataset.compress(RLELossless, encoding_plugin="pylibjpeg")
    return dataset


def radiograph_instance(jpeg: Path, *, study_uid: str, sop_class: str = DigitalXRayImageStorageForPresentation,
                        syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """A real radiograph (its JPEG's grayscale pixels) as an 8-bit instance."""
    return instance(grayscale(jpeg), study_uid=study_uid, sop_class=sop_class, syntax=syntax)


def grayscale(jpeg: Path) -> np.ndarray:
    return np.asarray(Image.open(jpeg).convert("L"))


def full_size_dx(*, study_uid: str, rows: int = 3000, columns: int = 2500, seed: int = 0) -> Dataset:
    """A hospital-size DX for presentation: 16 bits allocated, 12 stored, MONOCHROME2, a VOI window; smooth
    anatomy-like shading plus noise, so that it compresses as a radiograph does."""
    generator = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    body = 2500 + 1200 * np.sin(x / columns * np.pi) * np.cos((y / rows - 0.5) * np.pi)
    pixels = np.clip(body + generator.normal(0, 40, (rows, columns)), 0, 4095).astype(np.uint16)
    return instance(pixels, study_uid=study_uid, bits_stored=12, window=(2400.0, 2800.0))


def write(dataset: Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


def encoded(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def data_set_of(file_bytes: bytes) -> bytes:
    """The data set of a DICOM file, after its preamble and file meta group (which a receiver writes anew): what a
    sender's file and the file a receiver stored have the same when the instance arrived intact."""
    meta_group_length = int.from_bytes(file_bytes[140:144], "little")  # (0002,0000) UL, just after "DICM"
    return file_bytes[144 + meta_group_length:]
