"""A study's findings as DICOM objects a PACS files into the study they came from: one Structured Report of every
classified image, and (with explain) a Grad-CAM secondary capture of each. Pure: datasets in, datasets out.

The report follows TID 1500 (Measurement Report), as highdicom builds it. A classification is not a measured
region, so each image is one TID 1501 group (measurements and qualitative evaluations at image level): its source
image (SOP class and instance UID), the model as the algorithm, the predicted class as a qualitative evaluation of
the concept Finding (DCM 121071), and each class's probability as a measurement with no unit (UCUM `1`). The
classes are the model's own labels: they have no standard codes, so they are coded in the private scheme
PRIVATE_SCHEME (declared in the report's Coding Scheme Identification), the probability of a label as
`p-<label>`. The model is also named in Contributing Equipment (manufacturer PNEURADNET, the model's name and
version), the series says decision support and not a diagnosis, and the report is UNVERIFIED.

Patient and study modules come from a study header (study_header): a small copy of one received instance of the
study, made at intake. Every UID made here derives from a report id (the delivery's id), so a report built again
for a retried send is the same instance, which a PACS files once.
"""

import copy
import io
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.base import get_module_attribute_map
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID, ExplicitVRLittleEndian

MANUFACTURER = "PNEURADNET"

PRIVATE_SCHEME = "99PNEURADNET"
"""The coding scheme of the model's labels (a private one: `99` opens a local designator, PS3.16 8.2)."""

REPORT_SERIES_NUMBER = 9901
"""The report's series number: high, so a viewer lists it after the acquired series."""
CAPTURE_SERIES_NUMBER = 9902

REPORT_SERIES_DESCRIPTION = "AI decision support, not a diagnosis (PNEURADNET)"
CAPTURE_SERIES_DESCRIPTION = "AI Grad-CAM heatmaps, decision support, not a diagnosis"

PLAIN_CHEST_RADIOGRAPH = Code("399208008", "SCT", "Plain X-ray of chest")
"""The procedure reported (CID 100)."""

DISPLAY_ORIENTATION = ("L", "F")
"""A secondary capture's rows and columns, as a chest radiograph is displayed (towards the patient's left, then
feet): the heatmap is drawn over the image as shown."""

_HEADER_MODULES = ("patient", "clinical-trial-subject", "general-study", "patient-study", "clinical-trial-study")
"""The modules of a study header: who the patient is and which study, nothing of one image."""

_HEADER_IDENTITY = ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID")
"""Kept with the modules: the character set their text is in, and which instance they were copied from (highdicom
reads the modules by that instance's IOD)."""


_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
           "ReferringPhysicianName", "StudyID", "AccessionNumber")
"""The patient and study elements every object must carry, if only empty (type 2): a modality may leave them out."""


class ReportError(ValueError):
    """A report cannot be built from what was given (no image to report, an image without its UIDs)."""


@dataclass(frozen=True)
class ClassifiedImage:
    """One classified DICOM image, as a report names it."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]

    @property
    def predicted_class(self) -> str:
        return self.labels[max(range(len(self.probabilities)), key=self.probabilities.__getitem__)]

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> "ClassifiedImage":
        """From a succeeded job's result (pneuradnet.results.Prediction.to_dict); ReportError if its source is not
        a DICOM image with its UIDs."""
        source = result.get("source") or {}
        uids = [source.get(key) for key in ("sop_class_uid", "sop_instance_uid", "series_instance_uid")]
        if not all(uids):
            raise ReportError("the image is not a DICOM instance with its UIDs: a report cannot reference it")
        sop_class, sop_instance, series = map(str, uids)
        return cls(sop_class, sop_instance, series, labels=tuple(result["labels"]),
                   probabilities=tuple(float(p) for p in result["predictions"]))


def study_header(dataset: Dataset) -> Dataset:
    """The patient and study modules of a received instance (and which instance it was), with nothing else: what a
    report or a capture needs to file into the same study. It is patient data: keep it only as DICOM."""
    attributes = get_module_attribute_map()
    keywords = {item["keyword"] for module in _HEADER_MODULES for item in attributes[module] if not item["path"]}
    header = Dataset()
    for keyword in (*_HEADER_IDENTITY, *sorted(keywords)):
        if keyword in dataset:
            header[keyword] = dataset[keyword]
    for keyword in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID"):
        if keyword not in header:
            raise ReportError(f"the instance has no {keyword}: it names no study to report into")
    for keyword in _TYPE_2:
        if keyword not in header:
            setattr(header, keyword, None)  # present and empty, as the standard allows a sender to leave them
    return header


def header_bytes(header: Dataset) -> bytes:
    """A study header as a small Part-10 file, to keep until the report is sent."""
    kept = copy.deepcopy(header)
    kept.ensure_file_meta()
    kept.file_meta.MediaStorageSOPClassUID = header.SOPClassUID
    kept.file_meta.MediaStorageSOPInstanceUID = header.SOPInstanceUID
    kept.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    kept.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


_UID_NAMESPACE = uuid.UUID("5b1f0d9e-52c4-4d5e-9a53-2f1b7c0a6e21")
"""The namespace of this service's name-based UUIDs (any fixed value: it keeps them apart from others')."""


def report_uid(report_id: str, role: str) -> UID:
    """A UID that depends only on the report id and what it names, the same on every build of the report: a
    name-based UUID as a `2.25.` UID (PS3.5 B.2)."""
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'{report_id}|{role}').int}")


def structured_report(header: Dataset, images: Sequence[ClassifiedImage], *, model_name: str, model_version: str,
                      report_id: str) -> Dataset:
    """The study's report: one TID 1501 group per image, in the study of `header`, in a new series."""
    if not images:
        raise ReportError("no image was classified: there is nothing to report")
    algorithm = hd.sr.AlgorithmIdentification(name=model_name, version=model_version, manufacturer=MANUFACTURER)
    groups = [_image_group(image, algorithm, report_id=report_id, number=number)
              for number, image in enumerate(images, start=1)]
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=report_uid(f"{model_name} {model_version}", "device"), name=model_name, manufacturer_name=MANUFACTURER,
        model_name=f"{model_name} {model_version}")
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    content = hd.sr.MeasurementReport(observation_context=context, procedure_reported=PLAIN_CHEST_RADIOGRAPH,
                                      imaging_measurements=groups, title=codes.DCM.ImagingMeasurementReport)
    report = hd.sr.Comprehensive3DSR(
        evidence=[_evidence(header, image) for image in images], content=content[0],
        series_instance_uid=report_uid(report_id, "report series"), series_number=REPORT_SERIES_NUMBER,
        sop_instance_uid=report_uid(report_id, "report"), instance_number=1, manufacturer=MANUFACTURER,
        is_complete=True, is_verified=False, series_description=REPORT_SERIES_DESCRIPTION,
        manufacturer_model_name=model_name, software_versions=model_version,
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME, name="PNEURADNET model labels", responsible_organization=MANUFACTURER)],
        contributing_equipment=[_equipment(model_name, model_version)])
    return report


def heatmap_capture(header: Dataset, image: ClassifiedImage, png: bytes, *, model_name: str, model_version: str,
                    report_id: str, instance_number: int) -> Dataset:
    """A Grad-CAM heatmap (the PNG the worker made, blended over the radiograph) as a secondary capture in the
    report's capture series, referencing the image it explains."""
    with Image.open(io.BytesIO(png)) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=_evidence(header, image), pixel_array=pixels, photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", patient_orientation=DISPLAY_ORIENTATION,
        series_instance_uid=report_uid(report_id, "capture series"), series_number=CAPTURE_SERIES_NUMBER,
        sop_instance_uid=report_uid(report_id, f"capture of {image.sop_instance_uid}"),
        instance_number=instance_number, manufacturer=MANUFACTURER, series_description=CAPTURE_SERIES_DESCRIPTION,
        manufacturer_model_name=model_name, software_versions=model_version, transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[_equipment(model_name, model_version)])
    source = Dataset()
    source.ReferencedSOPClassUID = image.sop_class_uid
    source.ReferencedSOPInstanceUID = image.sop_instance_uid
    capture.SourceImageSequence = [source]
    capture.DerivationDescription = (f"Grad-CAM heatmap of {image.predicted_class} by {model_name} "
                                     f"{model_version}, over the image as displayed")
    capture.BurnedInAnnotation = "NO"
    return capture


def to_bytes(dataset: Dataset) -> bytes:
    """A dataset as a Part-10 file, as C-STORE and STOW-RS send it."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def label_code(label: str) -> Code:
    return Code(label, PRIVATE_SCHEME, label)


def probability_code(label: str) -> Code:
    return Code(f"p-{label}", PRIVATE_SCHEME, f"Probability of {label}")


def _image_group(image: ClassifiedImage, algorithm: hd.sr.AlgorithmIdentification, *, report_id: str,
                 number: int) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=report_uid(report_id, f"image {image.sop_instance_uid}"),
                                                     identifier=f"image {number}"),
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup(image.sop_class_uid, image.sop_instance_uid)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding,
                                                             value=label_code(image.predicted_class))],
        measurements=[hd.sr.Measurement(name=probability_code(label), value=probability, unit=codes.UCUM.NoUnits)
                      for label, probability in zip(image.labels, image.probabilities, strict=True)])


def _evidence(header: Dataset, image: ClassifiedImage) -> Dataset:
    """The header as if read from `image`: its patient and study, the image's own UIDs."""
    evidence = copy.deepcopy(header)
    evidence.SOPClassUID = image.sop_class_uid
    evidence.SOPInstanceUID = image.sop_instance_uid
    evidence.SeriesInstanceUID = image.series_instance_uid
    return evidence


def _equipment(model_name: str, model_version: str) -> hd.ContributingEquipment:
    return hd.ContributingEquipment(manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
                                    manufacturer_model_name=model_name, software_versions=model_version,
                                    contribution_description="automated classification: decision support, "
                                                             "not a diagnosis")
