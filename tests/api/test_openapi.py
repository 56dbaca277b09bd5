"""The live API against its own OpenAPI document, fuzzed by schemathesis: no 5xx, every answer as documented."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.model

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


def test_every_answer_to_generated_requests_is_documented_and_none_is_a_server_error(
        api_url: str, worker_process: subprocess.Popen):
    schemathesis = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [schemathesis, "run", f"{api_url}/openapi.json", "--checks", CHECKS, "--max-examples", "25",
         "--phases", "examples,coverage,fuzzing", "--generation-deterministic", "--request-timeout", "40"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks", "PYTHONPATH": str(ROOT)})

    assert run.returncode == 0, run.stdout[-6000:]
    tested = re.search(r"Tested: (\d+)", run.stdout)
    assert tested and int(tested.group(1)) >= 10, run.stdout[-2000:]
