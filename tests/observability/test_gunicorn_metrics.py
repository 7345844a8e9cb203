"""/metrics under a real gunicorn with several workers (multiprocess mode)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
import uuid

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.observability.test_metrics import METRIC_OF, PROMETHEUS_ACCEPT, sample
from tests.procs import Gunicorn
from tests.web import http_get

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.status, json.loads(r.read())


def test_counters_sum_over_workers_and_pass_promtool(pg_database, tmp_path):
    url = pg_database(pool=50)
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    env = {"DATABASE_URL": url, "PROMETHEUS_MULTIPROC_DIR": str(multiproc), "POOL_SIZE": "2"}
    with Gunicorn(env, workers=3) as server:
        k = 40
        tokens = set()
        for _ in range(k):  # new connection per request: spread over the workers
            status, body = post(server.url + "/api/tokens/activate", {"user_id": str(uuid.uuid4())})
            assert status == 200
            tokens.add(body["token_id"])
        pids = set()
        for _ in range(6):  # several scrapes, whichever worker answers, the same sum
            status, raw, _ = http_get(server.url + "/metrics")
            assert status == 200
            text = raw.decode()
            assert (
                sample(
                    text, "tokenpool_activations_total", result="success", reason="available", pool="default"
                )
                == k
            )
            pids.update(line.split('pid="')[1].split('"')[0] for line in text.splitlines() if 'pid="' in line)
        _, summary, _ = http_get(server.url + "/api/tokens/summary")
        summary = json.loads(summary)
        for name in ("total", "active", "available"):
            assert sample(text, METRIC_OF[name]) == summary[name]
        for token in tokens:
            assert token not in text
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.fail("promtool is not installed (apt-get install prometheus); .ci/run installs it")
        check = subprocess.run([promtool, "check", "metrics"], input=raw, capture_output=True)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
        # what Prometheus reads: OpenMetrics, the folder's sums and the scrape-time gauges together
        status, raw, headers = http_get(server.url + "/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
        assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
        families = {f.name: f for f in text_string_to_metric_families(raw.decode())}
        (success,) = [
            s
            for s in families["tokenpool_activations"].samples
            if s.name.endswith("_total") and s.labels.get("reason") == "available"
        ]
        assert success.value == k
        assert families["tokenpool_pool_size"].samples[0].value == summary["total"]
        # the exporter's name filter over the folder (its own restricted registry finds nothing there)
        _, raw, _ = http_get(
            server.url + "/metrics?name[]=tokenpool_activations_total&name[]=tokenpool_pool_size"
        )
        assert {line.split()[2] for line in raw.decode().splitlines() if line.startswith("# TYPE")} == {
            "tokenpool_activations_total",
            "tokenpool_pool_size",
        }
