"""The structured report and the heatmap captures, read back as a PACS would: with pydicom, and with dcmtk's
dsrdump (an independent SR reader)."""

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation, generate_uid

from pneuradnet.sr import (
    PRIVATE_SCHEME,
    ClassifiedImage,
    ReportError,
    header_bytes,
    heatmap_capture,
    structured_report,
    study_header,
    to_bytes,
)

STUDY = generate_uid()
PATIENT = {"PatientName": "Roe^Richard", "PatientID": "MRN-31337", "PatientBirthDate": "19500505",
           "PatientSex": "M", "StudyDate": "20260101", "StudyTime": "080000", "AccessionNumber": "ACC-55",
           "StudyID": "S-1", "ReferringPhysicianName": "Grey^Meredith"}


def received_instance(**elements: str) -> Dataset:
    """An instance as a modality sends it: patient, study, series, equipment and pixel data."""
    dataset = Dataset()
    dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.SOPInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.StudyInstanceUID = STUDY
    dataset.Modality = "DX"
    dataset.Manufacturer = "Acme X-Ray"
    dataset.InstitutionName = "St Example Hospital"
    dataset.SeriesDescription = "Chest PA"
    for keyword, value in {**PATIENT, **elements}.items():
        setattr(dataset, keyword, value)
    dataset.set_pixel_data(np.zeros((8, 8), np.uint8), photometric_interpretation="MONOCHROME2", bits_stored=8)
    return dataset


def classified(sop_class: str = DigitalXRayImageStorageForPresentation,
               probabilities: tuple[float, float] = (0.25, 0.75)) -> ClassifiedImage:
    return ClassifiedImage(sop_class, generate_uid(), generate_uid(), ("NORMAL", "PNEUMONIA"), probabilities)


def findings(report: Dataset) -> dict[str, tuple[str, dict[str, float]]]:
    """Read back: referenced SOP instance UID -> (predicted class, probability of each label)."""
    found = {}
    for group in _items(report, "Imaging Measurements")[0].ContentSequence:
        finding, probabilities, source = "", {}, ""
        for item in group.ContentSequence:
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            if item.ValueType == "CODE" and name == "Finding":
                code = item.ConceptCodeSequence[0]
                assert code.CodingSchemeDesignator == PRIVATE_SCHEME
                finding = code.CodeValue
            elif item.ValueType == "NUM":
                probabilities[name.removeprefix("Probability of ")] = float(
                    item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "IMAGE":
                source = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        found[source] = (finding, probabilities)
    return found


def _items(node: Dataset, meaning: str) -> list[Dataset]:
    return [item for item in node.ContentSequence if item.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def read(data: bytes) -> Dataset:
    return dcmread(io.BytesIO(data))


def test_the_study_header_keeps_patient_and_study_and_nothing_of_the_image():
    header = study_header(received_instance())

    assert header.PatientName == "Roe^Richard" and header.PatientID == "MRN-31337"
    assert header.StudyInstanceUID == STUDY and header.AccessionNumber == "ACC-55"
    assert "PixelData" not in header and "Manufacturer" not in header and "SeriesDescription" not in header
    assert "InstitutionName" not in header  # equipment, not study
    assert read(header_bytes(header)).PatientName == "Roe^Richard"  # kept as a small Part-10 file
    assert len(header_bytes(header)) < 2048


def test_an_instance_with_little_more_than_its_uids_is_reported_with_empty_patient_elements():
    instance = received_instance()
    for keyword in PATIENT:
        delattr(instance, keyword)

    report = read(to_bytes(structured_report(study_header(instance), [classified()], model_name="m",
                                             model_version="1", report_id="d")))

    assert report.StudyInstanceUID == STUDY and report.PatientID == "" and report.PatientBirthDate == ""


def test_an_instance_without_a_study_uid_has_no_header():
    instance = received_instance()
    del instance.StudyInstanceUID

    with pytest.raises(ReportError, match="StudyInstanceUID"):
        study_header(instance)


def test_the_report_files_into_the_study_with_each_images_class_and_probabilities():
    header = study_header(received_instance())
    images = [classified(probabilities=(0.25, 0.75)), classified(ComputedRadiographyImageStorage, (0.875, 0.125))]

    report = read(to_bytes(structured_report(header, images, model_name="xception-pneumonia", model_version="0.3.0",
                                             report_id="delivery-1")))

    assert report.Modality == "SR" and report.StudyInstanceUID == STUDY
    assert report.PatientName == "Roe^Richard" and report.PatientID == "MRN-31337"
    assert report.AccessionNumber == "ACC-55" and report.PatientBirthDate == "19500505"
    assert report.SeriesInstanceUID not in {image.series_instance_uid for image in images}
    assert report.VerificationFlag == "UNVERIFIED"
    assert "not a diagnosis" in report.SeriesDescription
    assert findings(report) == {images[0].sop_instance_uid: ("PNEUMONIA", {"NORMAL": 0.25, "PNEUMONIA": 0.75}),
                                images[1].sop_instance_uid: ("NORMAL", {"NORMAL": 0.875, "PNEUMONIA": 0.125})}
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    referenced = {(item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID)
                  for series in evidence for item in series.ReferencedSOPSequence}
    assert referenced == {(image.sop_class_uid, image.sop_instance_uid) for image in images}
    equipment = [item for item in report.ContributingEquipmentSequence if item.Manufacturer == "PNEURADNET"]
    assert [(item.ManufacturerModelName, item.SoftwareVersions) for item in equipment] == \
        [("xception-pneumonia", "0.3.0")]
    assert [item.CodingSchemeDesignator for item in report.CodingSchemeIdentificationSequence] == [PRIVATE_SCHEME]


def test_a_report_built_again_for_the_same_delivery_is_the_same_instance():
    header, images = study_header(received_instance()), [classified()]

    first, again, other = (structured_report(header, images, model_name="m", model_version="1", report_id=report_id)
                           for report_id in ("delivery-1", "delivery-1", "delivery-2"))

    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (first.SOPInstanceUID, first.SeriesInstanceUID)
    assert other.SOPInstanceUID != first.SOPInstanceUID and other.SeriesInstanceUID != first.SeriesInstanceUID


def test_no_image_no_report():
    with pytest.raises(ReportError, match="nothing to report"):
        structured_report(study_header(received_instance()), [], model_name="m", model_version="1", report_id="d")


def test_an_image_without_uids_cannot_be_reported():
    result = {"labels": ["NORMAL", "PNEUMONIA"], "predictions": [0.5, 0.5], "source": None}

    with pytest.raises(ReportError, match="UIDs"):
        ClassifiedImage.from_result(result)


def test_a_result_gives_the_image_its_uids():
    source = {"sop_class_uid": "1.2.3", "sop_instance_uid": "1.2.4", "series_instance_uid": "1.2.5"}

    image = ClassifiedImage.from_result({"labels": ["A", "B"], "predictions": [0.1, 0.9], "source": source})

    assert image == ClassifiedImage("1.2.3", "1.2.4", "1.2.5", ("A", "B"), (0.1, 0.9))
    assert image.predicted_class == "B"


def test_each_heatmap_is_a_capture_in_its_own_series_of_the_same_study():
    header, images = study_header(received_instance()), [classified(), classified()]
    png = io.BytesIO()
    Image.fromarray(np.full((30, 20, 3), (200, 40, 10), np.uint8)).save(png, "PNG")

    captures = [read(to_bytes(heatmap_capture(header, image, png.getvalue(), model_name="m", model_version="1",
                                              report_id="delivery-1", instance_number=number)))
                for number, image in enumerate(images, start=1)]
    report = structured_report(header, images, model_name="m", model_version="1", report_id="delivery-1")

    assert {capture.StudyInstanceUID for capture in captures} == {STUDY}
    assert len({capture.SeriesInstanceUID for capture in captures} | {report.SeriesInstanceUID}) == 2
    assert [capture.SourceImageSequence[0].ReferencedSOPInstanceUID for capture in captures] == \
        [image.sop_instance_uid for image in images]
    assert captures[0].PatientName == "Roe^Richard" and captures[0].Rows == 30 and captures[0].Columns == 20
    assert tuple(captures[0].pixel_array[0, 0]) == (200, 40, 10)
    assert "not a diagnosis" in captures[0].SeriesDescription


def test_dcmtk_reads_the_report(tmp_path: Path):
    header, images = study_header(received_instance()), [classified()]
    path = tmp_path / "report.dcm"
    path.write_bytes(to_bytes(structured_report(header, images, model_name="xception-pneumonia",
                                                model_version="0.3.0", report_id="d")))

    dumped = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=True)

    assert dumped.stderr == ""
    assert "Verification Flag   : UNVERIFIED" in dumped.stdout
    assert '<contains CODE:(,,"Finding")=(PNEUMONIA,99PNEURADNET,"PNEUMONIA")>' in dumped.stdout
    assert '<contains NUM:(,,"Probability of PNEUMONIA")="0.75" (1,UCUM,"no units")>' in dumped.stdout
