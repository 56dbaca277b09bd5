"""The alert rules and Prometheus' configuration load (`promtool check`), and each alert fires, and does not fire,
as its comment says (`promtool test rules` on monitoring/rules/pneuradnet.rules.test.yml)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml  # PyYAML: installed with uvicorn[standard]

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "rules" / "pneuradnet.rules.yml"
RULE_TESTS = MONITORING / "rules" / "pneuradnet.rules.test.yml"
CONFIG = MONITORING / "prometheus.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    if (path := shutil.which("promtool")) is None:
        pytest.fail("promtool is missing: scripts/install.sh --test installs it (Debian's prometheus package)")
    return path


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=MONITORING)


def test_the_alert_rules_are_valid(promtool: str):
    checked = run(promtool, "check", "rules", str(RULES))

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout


def test_each_alert_fires_and_stays_quiet_as_its_comment_says(promtool: str):
    tested = run(promtool, "test", "rules", str(RULE_TESTS))

    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_unit_test():
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]

    assert {case["alertname"] for case in cases if case["exp_alerts"]} == alerts, "an alert never shown to fire"
    assert {case["alertname"] for case in cases if not case["exp_alerts"]} == alerts, "an alert never shown quiet"


def test_prometheus_configuration_is_valid_with_its_rules(promtool: str, tmp_path: Path):
    # The configuration names the rules where the compose profile mounts them: check a copy pointing here.
    config = tmp_path / "prometheus.yml"
    config.write_text(CONFIG.read_text().replace("/etc/prometheus/rules/", f"{RULES.parent}/"))

    checked = run(promtool, "check", "config", str(config))

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout
