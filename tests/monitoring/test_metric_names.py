"""Every metric the dashboard and the alert rules name exists in /metrics of a live service (API and worker, after
jobs have succeeded and failed), with the labels they select on: renaming a metric breaks this test, not a
dashboard nobody looks at until the night it is needed."""

import json
import re
import time
from pathlib import Path

import httpx
import pytest
import yaml  # PyYAML: installed with uvicorn[standard]
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.model

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "pneuradnet.json"
RULES = MONITORING / "rules" / "pneuradnet.rules.yml"

SELECTOR = re.compile(r"\b(pneuradnet_[a-z_]+)\b(?:\{([^}]*)\})?")
LABEL_MATCHER = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def rule_expressions() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def selected(expressions: list[str]) -> dict[str, set[str]]:
    """Each metric the expressions name, with the labels they select it on."""
    metrics: dict[str, set[str]] = {}
    for expression in expressions:
        for name, matchers in SELECTOR.findall(expression):
            metrics.setdefault(name, set()).update(LABEL_MATCHER.findall(matchers))
    return metrics


def grouped(expression: str) -> set[str]:
    """The labels an expression groups by (`by (...)`, `without (...)`), but histogram_quantile's `le`."""
    return {label.strip() for labels in GROUPING.findall(expression) for label in labels.split(",")} - {"", "le"}


def exported_metrics(client: httpx.Client) -> dict[str, set[str]]:
    """Each sample name of /metrics, with its labels."""
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


def test_the_dashboard_and_the_rules_name_only_metrics_the_service_exports(client: httpx.Client,
                                                                           radiographs: list[Path]):
    files = [("files", (radiographs[0].name, radiographs[0].read_bytes())), ("files", ("bad.png", b"not an image"))]
    for job in client.post("/jobs", files=files).json()["jobs"]:
        client.get(f"/jobs/{job['id']}", params={"wait": 30})
    expressions = dashboard_expressions() + rule_expressions()
    wanted = selected(expressions)
    # A worker counts a failure by reason just after the job's transition, which the client may see first.
    exported: dict[str, set[str]] = {}
    deadline = time.monotonic() + 10
    while set(wanted) - set(exported) and time.monotonic() < deadline:
        time.sleep(0.1 if exported else 0)
        exported = exported_metrics(client)

    assert len(wanted) >= 15, sorted(wanted)  # the parsing found the metrics
    missing = sorted(set(wanted) - set(exported))
    assert not missing, f"named by monitoring/ but not in /metrics: {missing}"
    for name, labels in wanted.items():
        assert labels <= exported[name], f"{name} has no label {labels - exported[name]}"
    for expression in expressions:
        labels_there = set().union(*(exported[name] for name in selected([expression])))
        assert grouped(expression) <= labels_there, f"grouped by a label no metric of it has: {expression}"
