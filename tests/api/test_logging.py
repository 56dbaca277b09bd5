import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.live_service import start_api
from tests.processes import stop

pytestmark = pytest.mark.model


def test_json_logs_have_one_line_per_job_event_and_no_names_or_keys(
        worker_process: subprocess.Popen, radiographs: list[Path], tmp_path: Path):
    log_path = tmp_path / "api.log"
    api, url = start_api(log_path, LOG_FORMAT="json", API_KEYS="secret-key-123")
    identifying_name = "DOE_JOHN_1970-01-01.jpeg"  # hospitals do name files after patients
    try:
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer secret-key-123"}, timeout=60) as client:
            files = {"files": (identifying_name, radiographs[0].read_bytes())}
            (job,) = client.post("/jobs", files=files).json()["jobs"]
            client.get(f"/jobs/{job['id']}", params={"wait": 30})
            client.delete(f"/batches/{job['batch_id']}")
    finally:
        stop(api)

    text = log_path.read_text()
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    submitted = [e for e in events if e.get("event") == "submitted"]
    assert submitted == [{**submitted[0], "job_id": job["id"], "batch_id": job["batch_id"], "status": "queued"}]
    assert submitted[0]["level"] == "INFO" and job["id"] in submitted[0]["message"]
    assert identifying_name not in text
    assert "secret-key-123" not in text
