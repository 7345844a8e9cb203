"""Prometheus scrape config and alert rules: promtool checks and rule unit tests.

Needs `promtool` (CI installs Debian's prometheus package); the structural
checks need only PyYAML.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.exported_metrics import EXPORTED_METRICS

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (CI installs it: apt-get install -y --no-install-recommends prometheus)",
)

REQUIRED_ALERTS = {
    "HighErrorRate",
    "HighP95Latency",
    "DatabaseDown",
    "TokenManagerStopped",
    "NoTokensAvailable",
    "PoolUtilizationHigh",
    "PoolRejecting",
    "QueueGrowing",
    "RateLimitHitsRising",
    "InstanceDown",
}

KNOWN_METRICS = EXPORTED_METRICS | {"up"}  # "up" is written by Prometheus itself


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=120)


def _rules() -> list[dict]:
    groups = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@needs_promtool
def test_promtool_check_rules():
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_test_rules():
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_config():
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_test_rules_catches_a_wrong_expectation(tmp_path):
    """The unit-test harness can fail: a quiet expectation on a firing alert is reported."""
    shutil.copy(PROM_DIR / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "broken_test.yml").write_text(
        "rule_files: [alerts.yml]\n"
        "evaluation_interval: 1m\n"
        "tests:\n"
        "  - interval: 1m\n"
        "    input_series:\n"
        '      - series: \'up{job="tokenpool", instance="app1:8000"}\'\n'
        "        values: '0x10'\n"
        "    alert_rule_test:\n"
        "      - eval_time: 5m\n"
        "        alertname: InstanceDown\n"
        "        exp_alerts: []\n"
    )
    result = subprocess.run(
        [PROMTOOL, "test", "rules", "broken_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0


def test_required_alerts_are_defined_with_severity_and_runbook():
    rules = _rules()
    names = [rule["alert"] for rule in rules if "alert" in rule]
    assert set(names) == REQUIRED_ALERTS
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]


def test_alerts_use_only_exported_metrics():
    for rule in _rules():
        names = set(re.findall(r"\b([a-z_]+)\s*\{", rule["expr"]))
        assert names <= KNOWN_METRICS, (rule["alert"], names - KNOWN_METRICS)


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    tests = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == REQUIRED_ALERTS
    assert quiet == REQUIRED_ALERTS


def test_runbook_anchors_exist_in_production_doc():
    doc = (REPO / "docs" / "PRODUCTION.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+\s+(.+)$", doc, re.M)
    }
    for rule in _rules():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("docs/PRODUCTION.md#"), url
        assert url.split("#", 1)[1] in anchors, url


def test_scrape_config_names_the_job_the_rules_match():
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["tokenpool"]["metrics_path"] == "/metrics"
    assert "alerts.yml" in config["rule_files"]
