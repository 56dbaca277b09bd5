"""The dashboard loads as the compose profile provisions it: Grafana's provider reads the folder the dashboard is
mounted in, and every panel queries the provisioned data source."""

import json
from pathlib import Path

import yaml  # PyYAML: installed with uvicorn[standard]

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
ROOT = MONITORING.parent


def test_every_panel_queries_the_provisioned_prometheus_and_the_provider_finds_the_dashboard():
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "pneuradnet.json").read_text())
    (source,) = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
                               .read_text())["datasources"]
    (provider,) = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "dashboards" / "pneuradnet.yml")
                                 .read_text())["providers"]
    grafana = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]

    queried = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert queried and all(panel["datasource"]["uid"] == source["uid"] for panel in queried)
    assert all(target["expr"] for panel in queried for target in panel["targets"])
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    assert f"./monitoring/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    assert "./monitoring/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
