"""The batch's CSV export: a probability column per label of the configured model, whatever the jobs' fate, and
file names that no spreadsheet runs as formulas."""

import csv
import io
import json
from pathlib import Path

import httpx

from pneuradnet.results import Prediction
from service.jobstore import JobStore
from tests.api.routes.support import Serve, images

HOSTILE = ['=HYPERLINK("http://example.invalid","x").jpeg', "+SUM(1+1).jpeg", "-2+3.png", "@SUM(A1).png"]
"""Upload names that a spreadsheet would run as formulas."""

NOT_AN_IMAGE = {"type": "urn:pneuradnet:problem:invalid-image", "title": "Invalid image", "status": 422,
                "detail": "not an image: send PNG, JPEG or DICOM"}


def result(probability_of_pneumonia: float) -> dict:
    """A succeeded job's result, made by the serialiser the worker uses."""
    return Prediction(filename="", labels=("NORMAL", "PNEUMONIA"),
                      predictions=(1 - probability_of_pneumonia, probability_of_pneumonia),
                      model_name="xception-pneumonia", model_version="0.3.0", runtime="onnxruntime").to_dict()


async def csv_rows(api: httpx.AsyncClient, batch_id: str) -> tuple[list[str], list[dict[str, str]]]:
    answer = await api.get(f"/batches/{batch_id}", params={"format": "csv"})
    assert answer.status_code == 200, answer.text
    reader = csv.DictReader(io.StringIO(answer.text))
    return list(reader.fieldnames or []), list(reader)


async def test_a_batch_whose_jobs_all_failed_has_the_models_label_columns(api: httpx.AsyncClient, store: JobStore):
    submitted = (await api.post("/jobs", files=images("a.png", "b.png"))).json()
    ids = [job["id"] for job in submitted["jobs"]]
    store.claim(ids, token="run-1", lease=60)
    for job_id in ids:
        store.fail(job_id, NOT_AN_IMAGE, holder="run-1")

    columns, rows = await csv_rows(api, submitted["batch_id"])

    assert columns == ["filename", "status", "predicted_class", "confidence", "NORMAL", "PNEUMONIA", "error",
                       "job_id"]
    assert [(row["status"], row["NORMAL"], row["error"]) for row in rows] == [
        ("failed", "", NOT_AN_IMAGE["detail"])] * 2


async def test_the_label_columns_come_from_the_manifest_the_api_is_configured_with(serve: Serve, tmp_path: Path):
    manifest = tmp_path / "three-classes.json"  # its model file does not exist: the API never looks for it
    manifest.write_text(json.dumps({
        "name": "three-classes", "version": "1.0.0", "license": "test",
        "labels": ["Normal", "Bacterial pneumonia", "Viral pneumonia"],
        "input": {"height": 8, "width": 8, "channels": 3}, "resize": "nearest", "scaling": "unit",
        "output": "probabilities", "file": {"path": "missing.keras"}}))
    api = await serve(model_manifest=str(manifest))
    submitted = (await api.post("/jobs", files=images("waiting.png"))).json()

    columns, _ = await csv_rows(api, submitted["batch_id"])

    assert columns[4:7] == ["Normal", "Bacterial pneumonia", "Viral pneumonia"]


async def test_file_names_that_look_like_formulas_are_written_as_text(api: httpx.AsyncClient, store: JobStore):
    submitted = (await api.post("/jobs", files=images(*HOSTILE))).json()
    ids = [job["id"] for job in submitted["jobs"]]
    store.claim(ids, token="run-1", lease=60)
    store.succeed_many({job_id: result(0.75) for job_id in ids}, holder="run-1")

    _, rows = await csv_rows(api, submitted["batch_id"])

    # The names as the service keeps them (httpx sends a `"` of a file name as %22): each still starts a formula.
    kept = [job["filename"] for job in submitted["jobs"]]
    assert [name[:5] for name in kept] == ["=HYPE", "+SUM(", "-2+3.", "@SUM("]
    assert [row["filename"] for row in rows] == ["'" + name for name in kept]
    for row in rows:  # the numbers stay numbers
        assert (float(row["NORMAL"]), float(row["PNEUMONIA"]), float(row["confidence"])) == (0.25, 0.75, 0.75)
        assert row["predicted_class"] == "PNEUMONIA"

