"""Kubernetes manifests in deploy/k8s: structure and the promises they keep.

No cluster and no schema validator (kubeconform is neither in Debian nor on
PyPI): PyYAML loads every document and the tests check the keys that matter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "deploy" / "k8s"

REQUIRED_ENV = {
    "APP_ENV",
    "SECRET_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "MAX_ACTIVE_TOKENS",
    "TOKEN_LIFETIME_SECONDS",
    "CHECK_INTERVAL_SECONDS",
    "LOG_LEVEL",
    "PROXY_FIX_X_FOR",
    "PROXY_FIX_X_PROTO",
    "PROMETHEUS_MULTIPROC_DIR",
    "ADMIN_API_KEY",
    "MAX_CONTENT_LENGTH",
    "ALLOWED_ORIGINS",
    "FORCE_HTTPS",
    "ENABLE_RATE_LIMITING",
    "RATE_LIMIT_PER_MINUTE",
}
SECRET_KEYS = {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ADMIN_API_KEY"}


def _documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


DOCS = _documents()


def _one(kind: str) -> dict:
    found = [doc for _, doc in DOCS if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture
def deployment():
    return _one("Deployment")


@pytest.fixture
def container(deployment):
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_every_document_has_api_version_kind_name_and_no_namespace():
    assert DOCS
    for path, doc in DOCS:
        assert doc.get("apiVersion"), path
        assert doc.get("kind"), path
        assert doc.get("metadata", {}).get("name"), path
        assert "namespace" not in doc["metadata"], f"{path}: manifests are namespace-less"


def test_all_kinds_present_with_current_api_versions():
    versions = {doc["kind"]: doc["apiVersion"] for _, doc in DOCS}
    assert versions == {
        "ConfigMap": "v1",
        "Secret": "v1",
        "Deployment": "apps/v1",
        "Service": "v1",
        "Job": "batch/v1",
        "PodDisruptionBudget": "policy/v1",
    }


def test_probes_point_at_the_health_endpoints(container):
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000}
    expected = {
        "startupProbe": "/health/startup",
        "livenessProbe": "/health/live",
        "readinessProbe": "/health/ready",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in ports or get["port"] in ports.values()
        assert container[probe]["timeoutSeconds"] >= 1


def test_startup_probe_covers_a_slow_start(container):
    probe = container["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 60


def test_grace_period_covers_prestop_and_gunicorn_graceful_timeout(deployment, container):
    config = _one("ConfigMap")["data"]
    graceful = int(config["GUNICORN_GRACEFUL_TIMEOUT"])
    assert graceful == 30
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert 1 <= pre_stop <= 15
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + graceful
    assert grace == 45


def test_rolling_update_never_drops_below_desired(deployment):
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] >= 1
    assert deployment["spec"]["replicas"] >= 2


def test_resources_requests_and_memory_limit(container):
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_multiproc_dir_is_a_memory_emptydir(deployment, container):
    multiproc_dir = _one("ConfigMap")["data"]["PROMETHEUS_MULTIPROC_DIR"]
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volume_name = mounts[multiproc_dir]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes[volume_name]["emptyDir"]["medium"] == "Memory"


def test_pods_run_as_non_root_with_read_only_root(deployment, container):
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_environment_comes_from_the_configmap_and_secret(container):
    config, secret = _one("ConfigMap"), _one("Secret")
    refs = container["envFrom"]
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in refs
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in refs
    provided = set(config["data"]) | set(secret["stringData"])
    assert REQUIRED_ENV <= provided
    assert SECRET_KEYS <= set(secret["stringData"])
    assert not SECRET_KEYS & set(config["data"]), "secrets must not live in the ConfigMap"
    assert config["data"]["APP_ENV"] == "production"


def test_configmap_values_are_strings():
    for key, value in _one("ConfigMap")["data"].items():
        assert isinstance(value, str), f"{key} must be quoted"


def test_secret_values_are_marked_placeholders():
    for key, value in _one("Secret")["stringData"].items():
        assert "CHANGE-ME" in value, f"{key} must be an obvious placeholder"


def test_service_selects_the_api_pods(deployment):
    service = _one("Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_pdb_selects_the_api_pods(deployment):
    pdb = _one("PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"])


def test_migration_job_upgrades_then_seeds_with_the_same_image(container):
    job = _one("Job")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] in {"Never", "OnFailure"}
    (migrate,) = spec["containers"]
    assert migrate["image"] == container["image"]
    assert "command" not in migrate, "keep the image entrypoint (it prepares the metrics dir)"
    script = " ".join(migrate["args"])
    assert script.index("flask --app wsgi db upgrade") < script.index("flask --app wsgi tokens seed")
    assert migrate["envFrom"] == container["envFrom"]
    assert job["spec"]["backoffLimit"] >= 1
    api_labels = _one("Deployment")["spec"]["selector"]["matchLabels"]
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    assert not api_labels.items() <= job_labels.items(), "the Service must not route to the Job"
