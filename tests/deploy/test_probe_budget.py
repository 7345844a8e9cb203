"""The deploy files' probe timeouts agree with the database deadline (docs/HEALTH.md, "Probe arithmetic").

With D = DB_DEADLINE_SECONDS and H = HEALTH_CHECK_TIMEOUT: liveness and
/healthz answer within D + 1 s while the database hangs (a worker is stuck at
most D, then the stall guard answers at once), readiness and startup within
D + H. Each probe's timeout must be above its bound, gunicorn's worker timeout
far above all of them, and liveness may restart a pod only after readiness
has taken it out of rotation.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from service import create_app
from tests.deploy.test_dockerfile import _final

REPO = Path(__file__).resolve().parents[2]
K8S = {doc["kind"]: doc for doc in yaml.safe_load_all((REPO / "deploy/k8s/deployment.yaml").read_text())}
CONFIG = yaml.safe_load((REPO / "deploy/k8s/configmap.yaml").read_text())["data"]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


@pytest.fixture
def defaults(monkeypatch):
    """The service's own defaults for D and H (nothing from the environment)."""
    for name in ("DB_DEADLINE_SECONDS", "HEALTH_CHECK_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    config = create_app({"LOG_LEVEL": "WARNING"}).config
    return config["DB_DEADLINE_SECONDS"], config["HEALTH_CHECK_TIMEOUT"]


def _container() -> dict:
    return K8S["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)s", value)
    assert match, value
    return float(match.group(1))


def test_the_configmap_states_the_deadline_the_service_defaults_to(defaults):
    deadline, health = defaults
    assert float(CONFIG["DB_DEADLINE_SECONDS"]) == deadline == 3
    assert float(CONFIG["HEALTH_CHECK_TIMEOUT"]) <= deadline


def test_kubernetes_probe_timeouts_are_above_what_the_service_promises():
    deadline, health = float(CONFIG["DB_DEADLINE_SECONDS"]), float(CONFIG["HEALTH_CHECK_TIMEOUT"])
    container = _container()
    live, ready, startup = (container[p] for p in ("livenessProbe", "readinessProbe", "startupProbe"))
    assert live["timeoutSeconds"] > deadline + 1
    assert ready["timeoutSeconds"] > deadline + health
    assert startup["timeoutSeconds"] > deadline + health
    # a database pause long enough to fail liveness takes the pod out of rotation long before
    restart_after = live["failureThreshold"] * live["periodSeconds"]
    out_of_rotation_after = ready["failureThreshold"] * ready["periodSeconds"]
    assert restart_after >= 3 * out_of_rotation_after
    assert int(CONFIG["GUNICORN_TIMEOUT"]) > 2 * (deadline + health)


def test_docker_and_compose_healthchecks_outwait_liveness(defaults):
    deadline, _ = defaults
    healthcheck = _final("HEALTHCHECK")
    docker_timeout = _seconds(re.search(r"--timeout=(\S+)", healthcheck).group(1))
    client_timeout = float(re.search(r"timeout=(\d+(?:\.\d+)?)\)", healthcheck).group(1))
    assert deadline + 1 < client_timeout < docker_timeout
    compose = COMPOSE["app1"]["environment"]["DB_DEADLINE_SECONDS"]
    assert float(re.fullmatch(r"\$\{DB_DEADLINE_SECONDS:-(.+)\}", compose).group(1)) == deadline
    assert _seconds(COMPOSE["nginx"]["healthcheck"]["timeout"]) > deadline + 1


def test_gunicorn_kills_no_worker_that_keeps_the_deadline(defaults):
    deadline, health = defaults
    text = (REPO / "gunicorn.conf.py").read_text()
    default_timeout = int(re.search(r"^timeout = .*\b(\d+)\)+$", text, re.M).group(1))
    assert default_timeout > 2 * (deadline + health)
