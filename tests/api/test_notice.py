"""Every answer carries the decision-support notice: a header on all of them, and the body of JSON results."""

from pathlib import Path

import httpx
import pytest

from api.notice import NOTICE_HEADER
from api.schemas import DISCLAIMER

pytestmark = pytest.mark.model


def test_results_in_every_format_carry_the_notice(client: httpx.Client, radiographs: list[Path]):
    submitted = client.post("/jobs", files={"files": (radiographs[0].name, radiographs[0].read_bytes())})
    job_id, batch_id = submitted.json()["jobs"][0]["id"], submitted.json()["batch_id"]
    job = client.get(f"/jobs/{job_id}", params={"wait": 30})
    batch = client.get(f"/batches/{batch_id}")
    csv = client.get(f"/batches/{batch_id}", params={"format": "csv"})
    models = client.get("/models")
    legacy = client.post("/predict/", files={"file": (radiographs[1].name, radiographs[1].read_bytes())})

    for answer in (submitted, job, batch, csv, models, legacy):
        assert answer.status_code in (200, 202), answer.text
        assert answer.headers[NOTICE_HEADER] == DISCLAIMER
    for answer in (submitted, job, batch, models, legacy):
        assert answer.json()["notice"] == DISCLAIMER
    assert job.json()["status"] == "succeeded"


def test_problems_and_pages_carry_the_notice_header(client: httpx.Client):
    for answer in (client.get("/jobs/00000000-0000-4000-8000-000000000000"), client.get("/"),
                   client.post("/jobs", files={"image": ("a.png", b"x")})):
        assert answer.headers[NOTICE_HEADER] == DISCLAIMER
