"""The one CSV writer: columns from the model's labels, and cells a spreadsheet never runs as formulas."""

import csv
import io

import pytest

from pneuradnet.csvfile import ResultTable, csv_text, labels_of, neutralised
from pneuradnet.results import Prediction

HYPERLINK = '=HYPERLINK("http://example.invalid","x").jpeg'
SUM = "+SUM(1+1).jpeg"


def prediction(filename: str, probabilities: tuple[float, ...]) -> Prediction:
    return Prediction(filename=filename, labels=("NORMAL", "PNEUMONIA"), predictions=probabilities,
                      model_name="xception-pneumonia", model_version="0.3.0", runtime="onnxruntime")


def read(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("cell", [HYPERLINK, SUM, "-2+3", "@SUM(A1)", "\tlead", "\rlead"])
def test_a_cell_that_starts_like_a_formula_gets_a_quote_in_front(cell):
    assert neutralised(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["chest.jpeg", "a=b.png", "", 0.25, -1.5, 3])
def test_other_cells_and_numbers_are_written_as_they_are(cell):
    assert neutralised(cell) == cell


def test_a_job_table_keeps_hostile_names_as_text_and_probabilities_as_numbers():
    table = ResultTable(["NORMAL", "PNEUMONIA"])

    text = csv_text([table.header(),
                     table.row(HYPERLINK, prediction(HYPERLINK, (0.25, 0.75)).to_dict(), status="succeeded",
                               job_id="job-1"),
                     table.row(SUM, None, status="failed", error="not an image: send PNG, JPEG or DICOM",
                               job_id="job-2")])

    first, second = read(text)
    assert list(first) == ["filename", "status", "predicted_class", "confidence", "NORMAL", "PNEUMONIA", "error",
                           "job_id"]
    assert first["filename"] == "'" + HYPERLINK
    assert (float(first["NORMAL"]), float(first["PNEUMONIA"]), float(first["confidence"])) == (0.25, 0.75, 0.75)
    assert (first["predicted_class"], first["job_id"]) == ("PNEUMONIA", "job-1")
    assert second == {"filename": "'" + SUM, "status": "failed", "predicted_class": "", "confidence": "",
                      "NORMAL": "", "PNEUMONIA": "", "error": "not an image: send PNG, JPEG or DICOM",
                      "job_id": "job-2"}


def test_the_table_of_predict_has_no_job_columns():
    table = ResultTable(["NORMAL", "PNEUMONIA"], jobs=False)

    [row] = read(csv_text([table.header(), table.row("chest.jpeg", prediction("chest.jpeg", (0.9, 0.1)).to_dict())]))

    assert row == {"filename": "chest.jpeg", "predicted_class": "NORMAL", "confidence": "0.9", "NORMAL": "0.9",
                   "PNEUMONIA": "0.1", "error": ""}


def test_label_columns_are_the_models_even_without_a_result_then_any_other_label_seen():
    other_model = {"labels": ["Normal", "Viral pneumonia"], "predictions": [0.5, 0.5]}

    assert labels_of([None, None], ["NORMAL", "PNEUMONIA"]) == ["NORMAL", "PNEUMONIA"]
    assert labels_of([None, other_model], ["NORMAL", "PNEUMONIA"]) == ["NORMAL", "PNEUMONIA", "Normal",
                                                                         "Viral pneumonia"]
    assert labels_of([other_model]) == ["Normal", "Viral pneumonia"]
