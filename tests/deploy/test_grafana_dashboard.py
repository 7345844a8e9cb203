"""deploy/grafana/tokenpool-dashboard.json: valid JSON, the panels the
operators need, and PromQL that promtool accepts (when promtool is there)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.exported_metrics import EXPORTED_METRICS

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((REPO / "deploy" / "grafana" / "tokenpool-dashboard.json").read_text())
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
EXPRS = [t["expr"] for p in PANELS for t in p["targets"]]

KNOWN_METRICS = EXPORTED_METRICS


def test_dashboard_identity_and_datasource_variable():
    assert DASHBOARD["uid"] == "tokenpool-overview"
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_required_panels():
    titles = " | ".join(p["title"].lower() for p in PANELS)
    for needed in (
        "request rate",
        "p50 / p95 / p99",
        "error rate",
        "activations",
        "releases",
        "pool utilization",
        "sweeper lag",
        "rate-limit hits",
        "db query latency",
        "db pool connections",
    ):
        assert needed in titles, needed


def test_every_panel_queries_known_metrics_of_the_tokenpool_job():
    for panel in PANELS:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\b([a-z_]+)\{", target["expr"]))
            assert names and names <= KNOWN_METRICS, (panel["title"], names - KNOWN_METRICS)
            assert 'job="tokenpool"' in target["expr"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_every_expression_is_valid_promql(tmp_path):
    rules = [
        {"record": f"tokenpool:dashboard_check:{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(EXPRS)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
