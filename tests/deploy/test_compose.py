"""docker-compose.yml: start order, health checks and wiring (parsed, not run:
there is no Docker engine where these tests run)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
NGINX_PLACEHOLDERS = set(
    re.findall(
        r"\$\{([A-Z][A-Z0-9_]*)\}",
        "".join(p.read_text() for p in (REPO / "nginx" / "templates").rglob("*.template")),
    )
)


def test_services_present():
    assert {"postgres", "redis", "migrate", "app1", "app2", "nginx", "prometheus"} <= set(SERVICES)
    assert SERVICES["postgres"]["image"].startswith("postgres:16")
    assert SERVICES["redis"]["image"].startswith("redis:7")


def test_databases_have_healthchecks():
    for name in ("postgres", "redis"):
        assert SERVICES[name]["healthcheck"]["test"], name


def test_migrate_runs_once_then_apps_start():
    migrate = SERVICES["migrate"]
    assert migrate["restart"] == "no"
    script = " ".join(migrate["command"])
    assert script.index("flask --app wsgi db upgrade") < script.index("flask --app wsgi tokens seed")
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for app in ("app1", "app2"):
        deps = SERVICES[app]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
        assert "command" not in SERVICES[app], "the image CMD (gunicorn) runs"


def test_apps_get_production_settings_and_a_metrics_tmpfs():
    for app in ("app1", "app2"):
        service = SERVICES[app]
        env = service["environment"]
        assert env["APP_ENV"] == "production"
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["REDIS_URL"].startswith("redis://redis:6379")
        assert env["PROXY_FIX_X_FOR"] == "1" and env["PROXY_FIX_X_PROTO"] == "1"
        assert any(t.startswith(env["PROMETHEUS_MULTIPROC_DIR"] + ":") for t in service["tmpfs"])
        assert service["stop_grace_period"] == "45s"


def test_nginx_renders_the_templates_for_both_apps():
    nginx = SERVICES["nginx"]
    env = nginx["environment"]
    assert "./nginx/templates:/etc/nginx/templates:ro" in nginx["volumes"]
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert NGINX_PLACEHOLDERS <= set(env), NGINX_PLACEHOLDERS - set(env)
    assert "server app1:8000" in env["UPSTREAMS"] and "server app2:8000" in env["UPSTREAMS"]
    for app in ("app1", "app2"):
        assert nginx["depends_on"][app]["condition"] == "service_healthy"


def test_prometheus_uses_the_repo_config():
    prometheus = SERVICES["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t
        for job in config["scrape_configs"]
        if job["job_name"] == "tokenpool"
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    assert targets == {"app1:8000", "app2:8000"}
