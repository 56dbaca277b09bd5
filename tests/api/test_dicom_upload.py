"""A DICOM upload end to end: the live API and worker recognise it by content, whatever its name."""

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, RLELossless, generate_uid

pytestmark = pytest.mark.model

IDENTIFYING = {"PatientName": "Doe^Jane", "PatientID": "PID-4711-XYZ", "InstitutionName": "St Example Hospital"}

ALLOWED_SOURCE = {"format", "modality", "view_position", "rows", "columns", "frames", "frame_used",
                  "photometric_interpretation", "bits_stored"}


def as_dicom(jpeg: Path) -> bytes:
    """The radiograph as an RLE Lossless DX file, its patient named; its pixels are the JPEG's."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.SOPInstanceUID = generate_uid()
    dataset.Modality = "DX"
    dataset.ViewPosition = "PA"
    for keyword, value in IDENTIFYING.items():
        setattr(dataset, keyword, value)
    dataset.set_pixel_data(np.asarray(Image.open(jpeg).convert("L")), photometric_interpretation="MONOCHROME2",
                           bits_stored=8)
    dataset.compress(RLELossless, encoding_plugin="pylibjpeg")
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_dicom_named_anything_is_classified_as_its_jpeg(client: httpx.Client, radiographs: list[Path]):
    jpeg = radiographs[-1]  # a pneumonia radiograph
    files = [("files", ("study.bin", as_dicom(jpeg), "application/octet-stream")),
             ("files", (jpeg.name, jpeg.read_bytes(), "image/jpeg"))]

    submitted = client.post("/jobs", files=files)

    assert submitted.status_code == 202
    answers = [client.get(f"/jobs/{job['id']}", params={"wait": 30}) for job in submitted.json()["jobs"]]
    dicom, source = (answer.json() for answer in answers)
    assert dicom["filename"] == "study.bin"
    assert dicom["status"] == "succeeded", dicom["error"]
    assert source["status"] == "succeeded"
    assert dicom["result"]["predicted_class"] == source["result"]["predicted_class"] == "PNEUMONIA"
    assert dicom["result"]["predictions"] == pytest.approx(source["result"]["predictions"], abs=1e-3)
    facts = dicom["result"]["source"]
    assert set(facts) <= ALLOWED_SOURCE
    assert facts["format"] == "DICOM" and facts["modality"] == "DX" and facts["frames"] == 1
    assert source["result"]["source"] is None
    for value in ("Doe", "Jane", "4711", "Example Hospital"):
        assert value not in answers[0].text
