"""The deploy files give the Prometheus multiprocess folder the room service/metrics_storage.py asks for."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.metrics_storage import MIN_FREE_BYTES, folder_bytes

REPO = Path(__file__).resolve().parents[2]
MAX_WORKERS = 8  # gunicorn.conf.py's default caps WEB_CONCURRENCY there
UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", size).groups()
    return int(number) * UNITS[unit]


def test_compose_tmpfs_holds_the_largest_default_worker_count():
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    apps = [s for s in services.values() if "tmpfs" in s and "PROMETHEUS_MULTIPROC_DIR" in s["environment"]]
    assert apps
    for service in apps:
        folder = service["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        (mount,) = [t for t in service.get("tmpfs", []) if t.startswith(folder + ":")]
        size = _bytes(re.search(r"size=(\w+)", mount).group(1))
        assert size >= folder_bytes(MAX_WORKERS) + MIN_FREE_BYTES, mount


def test_k8s_empty_dir_holds_the_largest_default_worker_count():
    docs = list(yaml.safe_load_all((REPO / "deploy" / "k8s" / "deployment.yaml").read_text()))
    pod = next(d for d in docs if d and d.get("kind") == "Deployment")["spec"]["template"]["spec"]
    mounts = [m for c in pod["containers"] for m in c["volumeMounts"]]
    (mount,) = [m for m in mounts if m["mountPath"] == "/tmp/prometheus"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "Memory"
    assert _bytes(volume["emptyDir"]["sizeLimit"]) >= folder_bytes(MAX_WORKERS) + MIN_FREE_BYTES
