"""/health?details=true: memory against its limit, the caches, performance figures, the pool; uptime_human."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from service.db import run_transaction
from service.health.details import human_duration, memory_limit
from tests.conftest import make_app, reset_database
from tests.procs import free_port

# about 50 ms on either database: a statement that is slow by any threshold below that
SLOW_STATEMENT = text(
    "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 200000) SELECT count(*) FROM r"
)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (0.9, "0s"), (59.9, "59s"), (61, "1m 1s"), (3600, "1h 0m 0s"), (93784.2, "1d 2h 3m 4s")],
)
def test_human_duration(seconds, shown):
    assert human_duration(seconds) == shown


def test_uptime_human_beside_uptime_seconds(client):
    for path in ("/health", "/health/live"):
        body = client.get(path).get_json()
        assert isinstance(body["uptime_seconds"], float)
        assert body["uptime_human"] == human_duration(body["uptime_seconds"])


@pytest.mark.options(SLOW_QUERY_MS=5, SLOW_REQUEST_MS=5, HEALTH_CACHE_SECONDS=60, MAX_ACTIVE_TOKENS=5)
def test_details_add_memory_cache_performance_and_pool(app, client, is_postgres):
    @app.get("/api/_test/slow")
    def slow():
        run_transaction(lambda conn: conn.execute(SLOW_STATEMENT).scalar())
        return {"ok": True}

    @app.get("/api/_test/boom")
    def boom():
        raise RuntimeError("boom")

    assert client.get("/api/_test/slow").status_code == 200
    assert client.get("/api/_test/boom").status_code == 500
    for _ in range(3):
        assert client.get("/api/tokens/summary").status_code == 200
    client.get("/health")  # the report is cached: the next call is a hit

    r = client.get("/health?details=true")
    assert r.status_code == 200
    details = r.get_json()["details"]

    memory = details["memory"]
    assert memory["rss_bytes"] > 10 * 2**20
    assert memory["limit_source"] in ("cgroup", "system")
    assert memory["limit_bytes"] >= memory["rss_bytes"]
    share = 100 * memory["rss_bytes"] / memory["limit_bytes"]
    assert memory["rss_percent_of_limit"] == pytest.approx(share, abs=0.01)

    cache = details["cache"]
    assert cache["health_report"]["hits"] >= 1 and cache["health_report"]["size"] == 1
    assert set(cache["api_keys"]) >= {"hits", "misses", "size", "hit_rate"}
    total = cache["total"]
    assert total["hits"] == cache["health_report"]["hits"] + cache["api_keys"]["hits"]
    assert total["hit_rate"] == round(total["hits"] / (total["hits"] + total["misses"]), 4)

    performance = details["performance"]
    assert performance["scope"] == "process" and performance["window_minutes"] == 5
    assert performance["requests"] == 5
    assert performance["errors"] == 1 and performance["error_rate"] == 0.2
    assert performance["slow_queries"] >= 1 and performance["slow_query_ms"] == 5
    assert performance["slow_requests"] >= 1
    slow_routes = [entry["route"] for entry in performance["slow_endpoints"]]
    assert "/api/_test/slow" in slow_routes
    p95s = [entry["p95_ms"] for entry in performance["slow_endpoints"]]
    assert p95s == sorted(p95s, reverse=True)

    pool = details["database_pool"]
    assert pool["in_use"] == 0 and pool["idle"] >= 1
    if is_postgres:  # SQLite keeps SQLAlchemy's own pool sizes
        assert pool["size"] == app.config["POOL_SIZE"]
        assert pool["max"] == app.config["POOL_SIZE"] + app.config["POOL_MAX_OVERFLOW"]


def test_details_part_that_fails_shows_its_error_and_health_still_answers(sqlite_url):
    app = make_app(sqlite_url, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", MONITORING_FLUSH_SECONDS=0)
    reset_database(app)
    r = app.test_client().get("/health?details=true")
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "degraded" and body["checks"]["redis"]["status"] == "degraded"
    assert body["details"]["performance"] == {"error": "ConnectionError"}
    assert "rss_bytes" in body["details"]["memory"] and "in_use" in body["details"]["database_pool"]


def test_no_details_without_asking(client):
    assert "details" not in client.get("/health").get_json()


def _cgroup_v2(tmp_path, limit: str, usage: str = "1048576"):
    (tmp_path / "proc").write_text("0::/kubepods/pod1\n")
    folder = tmp_path / "cg" / "kubepods" / "pod1"
    folder.mkdir(parents=True)
    (folder / "memory.max").write_text(limit + "\n")
    (folder / "memory.current").write_text(usage + "\n")
    return tmp_path / "cg", tmp_path / "proc"


def test_memory_limit_of_a_cgroup_v2(tmp_path):
    root, proc = _cgroup_v2(tmp_path, str(256 * 2**20))
    assert memory_limit(root, proc) == {
        "limit_bytes": 256 * 2**20,
        "limit_source": "cgroup",
        "cgroup_usage_bytes": 1048576,
    }


def test_memory_limit_max_means_the_whole_machine(tmp_path):
    root, proc = _cgroup_v2(tmp_path, "max")
    found = memory_limit(root, proc)
    assert found["limit_source"] == "system" and found["limit_bytes"] > 256 * 2**20


def test_memory_limit_of_a_cgroup_v1_and_its_huge_none(tmp_path):
    (tmp_path / "proc").write_text("5:cpu,cpuacct:/\n4:memory:/docker/abc\n0::/\n")
    folder = tmp_path / "cg" / "memory" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "memory.limit_in_bytes").write_text(str(300 * 2**20))
    (folder / "memory.usage_in_bytes").write_text("2097152")
    found = memory_limit(tmp_path / "cg", tmp_path / "proc")
    assert found == {"limit_bytes": 300 * 2**20, "limit_source": "cgroup", "cgroup_usage_bytes": 2097152}
    (folder / "memory.limit_in_bytes").write_text("9223372036854771712")  # cgroup v1 for "no limit"
    assert memory_limit(tmp_path / "cg", tmp_path / "proc")["limit_source"] == "system"


def test_memory_limit_without_cgroups(tmp_path):
    found = memory_limit(tmp_path / "none", tmp_path / "missing")
    assert found["limit_source"] == "system" and "cgroup_usage_bytes" not in found
