"""Real nginx (rendered from nginx/templates) in front of two real gunicorn instances, 2 workers each,
on one PostgreSQL database and one Redis: the deploy files proven with the real programs.

The tests share one stack; each sends from its own loopback address (its own rate-limit bucket, its
own remote_addr in the logs) and filters the shared logs by that address or by request id.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from tests.conftest import database
from tests.e2e.conftest import SHARED_POOL, SHARED_RATE_LIMIT
from tests.e2e.stack import access_lines, json_lines
from tests.invariants import assert_invariants
from tests.procs import wait_for
from tests.web import request

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ACTIVATE = "/api/tokens/activate"
NGINX_ID = re.compile(r"[0-9a-f]{32}")


def _activate(port: int, user: str, source: str):
    return request(port, "POST", ACTIVATE, body={"user_id": user}, source=source)


def _lines_with(gunicorn, request_id: str) -> list[dict]:
    return [r for r in json_lines(gunicorn.log_lines()) if r.get("request_id") == request_id]


def _access_with(stack, request_id: str) -> list[tuple[str, int]]:
    """(path, status) of the access lines with this request id, over every instance."""
    return [
        (r["path"], r["status"])
        for g in stack.gunicorns
        for r in _lines_with(g, request_id)
        if r["logger"] == "tokenpool.access"
    ]


def _nginx_entry(nginx, predicate) -> dict:
    """The last access-log entry of nginx that matches (nginx logs after the response is sent)."""
    found: list[dict] = []

    def logged() -> bool:
        found[:] = [e for e in nginx.access_log() if predicate(e)]
        return bool(found)

    wait_for(logged, 3, what="nginx access log entry")
    return found[-1]


def _usage_rows(url: str, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """For each (user_id, token_id): how many usage rows the database holds."""
    with database(url) as conn:
        rows = conn.execute(text("SELECT user_id::text, token_id::text FROM token_usages")).fetchall()
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        counts[(row[0], row[1])] = counts.get((row[0], row[1]), 0) + 1
    return {pair: counts.get(pair, 0) for pair in pairs}


def test_activations_are_balanced_over_both_instances_and_keep_the_pool_invariants(shared_stack):
    s, pool, client = shared_stack, SHARED_POOL, "127.0.0.11"
    users = [str(uuid.uuid4()) for _ in range(40)]  # 4x the pool: at least 30 of them evict someone
    with ThreadPoolExecutor(4) as ex:
        answers = list(ex.map(lambda u: _activate(s.nginx.port, u, client), users))
    again = _activate(s.nginx.port, users[-1], client)  # the current holder asks again: same token

    assert [a.status for a in answers] == [200] * len(users), [a for a in answers if a.status != 200]
    granted = [(a.json()["user_id"], a.json()["token_id"]) for a in answers]
    assert [u for u, _ in granted] == users
    assert again.status == 200 and again.json()["token_id"] == granted[-1][1]

    # balanced: both instances' own logs have activation access lines, together exactly ours
    served = [
        [r for r in access_lines(g) if r["path"] == ACTIVATE and r["remote_addr"] == client]
        for g in s.gunicorns
    ]
    counts = [len(lines) for lines in served]
    print(f"activations per instance: {counts}")
    assert sum(counts) == len(users) + 1
    assert min(counts) >= len(users) // 4, counts
    assert all(r["status"] == 200 for lines in served for r in lines)

    def ours():
        return [e for e in s.nginx.access_log() if e["uri"] == ACTIVATE and e["remote_addr"] == client]

    wait_for(lambda: len(ours()) == len(users) + 1, 3, what="nginx access log")
    upstreams = {e["upstream_addr"] for e in ours()}
    assert upstreams == {f"127.0.0.1:{g.port}" for g in s.gunicorns}

    # every activation answered 200 has its usage row; the invariants hold in the database
    assert set(_usage_rows(s.database_url, granted).values()) == {1}
    with database(s.database_url) as conn:
        assert_invariants(conn, pool)
        reasons = dict(
            conn.execute(
                text(
                    "SELECT coalesce(end_reason, 'open'), count(*) FROM token_usages"
                    " WHERE user_id::text = ANY(:users) GROUP BY 1"
                ),
                {"users": users},
            ).fetchall()
        )
        held = conn.execute(text("SELECT count(*) FROM tokens WHERE current_user_id IS NOT NULL")).scalar()
    assert sum(reasons.values()) == len(users), reasons  # one lease each, the repeat made none
    assert held == pool
    assert reasons.get("evicted", 0) >= len(users) - pool, reasons


def test_client_address_reaches_the_app_and_the_per_ip_limit_holds_across_both_instances(shared_stack):
    s, n = shared_stack, SHARED_RATE_LIMIT
    client = "127.0.0.5"  # not nginx's address (nginx connects upstream from 127.0.0.1)

    def summary(_):
        return request(s.nginx.port, "GET", "/api/tokens/summary", source=client)

    with ThreadPoolExecutor(4) as ex:
        answers = list(ex.map(summary, range(2 * n)))
    statuses = sorted(a.status for a in answers)
    assert statuses == [200] * n + [429] * n, statuses
    limited = next(a for a in answers if a.status == 429)
    assert limited.json()["error_code"] == "RATE_LIMITED"
    assert int(limited.headers["retry-after"]) > 0

    # a spoofed X-Forwarded-For does not buy a new bucket: only nginx's own hop is trusted
    spoofed = request(
        s.nginx.port, "GET", "/api/tokens/summary", source=client, headers={"X-Forwarded-For": "10.9.9.9"}
    )
    assert spoofed.status == 429
    # another client has its own bucket: the app does not count nginx's address
    other = request(s.nginx.port, "GET", "/api/tokens/summary", source="127.0.0.6")
    assert other.status == 200

    lines = [[r for r in access_lines(g) if r["remote_addr"] in (client, "127.0.0.6")] for g in s.gunicorns]
    assert all(lines), "both instances served (and limited) this client"
    by_addr = [r["remote_addr"] for per in lines for r in per]
    assert by_addr.count(client) == 2 * n + 1
    assert by_addr.count("127.0.0.6") == 1
    per_instance = [{st: [r["status"] for r in per].count(st) for st in (200, 429)} for per in lines]
    print(f"statuses per instance for {client}: {per_instance}")
    assert sum(r["status"] == 200 for per in lines for r in per if r["remote_addr"] == client) == n

    def nginx_saw(addr):
        return sum(e["remote_addr"] == addr for e in s.nginx.access_log())

    wait_for(lambda: nginx_saw(client) == 2 * n + 1 and nginx_saw("127.0.0.6") == 1, 3, what="nginx log")


def test_request_id_from_nginx_or_the_client_is_on_the_app_log_lines(shared_stack):
    s, client = shared_stack, "127.0.0.13"
    generated = request(s.nginx.port, "GET", "/api/tokens/summary", source=client)
    assert generated.status == 200
    rid = generated.headers["x-request-id"]
    assert NGINX_ID.fullmatch(rid), rid  # nginx's $request_id: the app did not make its own
    assert _nginx_entry(s.nginx, lambda e: e["request_id"] == rid)["uri"] == "/api/tokens/summary"
    assert _access_with(s, rid) == [("/api/tokens/summary", 200)]

    # an activation: every app line of the request (token event and access line) carries nginx's id
    user = str(uuid.uuid4())
    activated = _activate(s.nginx.port, user, client)
    assert activated.status == 200
    rid = activated.headers["x-request-id"]
    assert NGINX_ID.fullmatch(rid)
    assert _access_with(s, rid) == [(ACTIVATE, 200)]
    events = [
        r
        for g in s.gunicorns
        for r in json_lines(g.log_lines())
        if r.get("user_id") == user and r.get("event")
    ]
    assert [(r["event"], r["status"]) for r in events] == [("activation", "success")], events
    assert {r["request_id"] for r in events} == {rid}

    # a valid client id passes through nginx and the app unchanged
    own = "e2e-client.id:42"
    passed = request(s.nginx.port, "GET", "/api/tokens/summary", headers={"X-Request-ID": own}, source=client)
    assert passed.headers["x-request-id"] == own
    assert _nginx_entry(s.nginx, lambda e: e["request_id"] == own)["uri"] == "/api/tokens/summary"
    assert _access_with(s, own) == [("/api/tokens/summary", 200)]

    # a malformed one is replaced by nginx's
    bad = request(
        s.nginx.port, "GET", "/api/tokens/summary", headers={"X-Request-ID": "bad id;drop"}, source=client
    )
    assert NGINX_ID.fullmatch(bad.headers["x-request-id"])
    assert _access_with(s, bad.headers["x-request-id"]) == [("/api/tokens/summary", 200)]


def test_metrics_allow_list_healthz_and_body_limit(shared_stack):
    s, client = shared_stack, "127.0.0.14"
    # an nginx whose allow-list is a network the loopback client is not on
    private = s.add_nginx("nginx-metrics-10-8", METRICS_ALLOW="allow 10.0.0.0/8;")
    refused = request(private.port, "GET", "/metrics")
    assert refused.status == 403
    assert refused.headers["content-type"].startswith("application/json")
    assert refused.json()["error_code"] == "FORBIDDEN"
    entry = _nginx_entry(private, lambda e: e["uri"] == "/metrics")
    assert entry["status"] == 403 and entry["upstream_addr"] == "", "refused by nginx, never proxied"

    for g in s.gunicorns:  # served directly by each instance, to Prometheus on the inside
        direct = request(g.port, "GET", "/metrics")
        assert direct.status == 200
        assert direct.headers["content-type"].startswith("text/plain")
        assert "tokenpool_" in direct.body.decode()

    # the shipped default list includes 127.0.0.1: the stack's main nginx serves it
    assert request(s.nginx.port, "GET", "/metrics").status == 200
    assert request(s.nginx.port, "GET", "/metrics", source=client).status == 403  # not on the list

    for _ in range(4):  # round robin: each instance answers the load balancer's check through nginx
        healthz = request(s.nginx.port, "GET", "/healthz", source=client)
        assert healthz.status == 200
    request(
        s.nginx.port, "GET", "/api/tokens/summary", headers={"X-Request-ID": "after-healthz"}, source=client
    )
    _nginx_entry(s.nginx, lambda e: e["request_id"] == "after-healthz")
    assert all(e["uri"] != "/healthz" for e in s.nginx.access_log()), "/healthz is not logged by nginx"

    too_big = request(
        s.nginx.port,
        "POST",
        ACTIVATE,
        body=b'{"user_id": "' + b"x" * (64 * 1024) + b'"}',
        headers={"Content-Type": "application/json", "X-Request-ID": "too-big-1"},
        source=client,
    )
    assert too_big.status == 413
    assert too_big.json()["error_code"] == "PAYLOAD_TOO_LARGE"
    assert too_big.json()["request_id"] == "too-big-1"
    assert not [r for g in s.gunicorns for r in _lines_with(g, "too-big-1")], "the app never saw it"

    # just under the cap the body reaches the app, which judges it (a 400, not nginx's 413)
    under = request(
        s.nginx.port,
        "POST",
        ACTIVATE,
        body=b'{"user_id": "' + b"x" * (60 * 1024) + b'"}',
        headers={"Content-Type": "application/json", "X-Request-ID": "under-cap-1"},
        source=client,
    )
    assert under.status == 400, under
    assert under.json()["error_code"] == "VALIDATION_ERROR"
    assert _access_with(s, "under-cap-1") == [(ACTIVATE, 400)]


def test_nginx_gzips_the_apps_json_above_1_kib_and_the_app_never_does(shared_stack):
    s, client = shared_stack, "127.0.0.15"
    gzip_ok = {"Accept-Encoding": "gzip"}
    big = "/api/tokens?state=all&limit=100"  # the whole shared pool: well above 1 KiB
    plain = request(s.nginx.port, "GET", big, source=client)
    assert plain.status == 200 and len(plain.body) > 1024
    assert "content-encoding" not in plain.headers
    assert plain.headers["vary"] == "Accept-Encoding"

    packed = request(s.nginx.port, "GET", big, headers=gzip_ok, source=client)
    assert packed.status == 200
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["vary"] == "Accept-Encoding"
    assert len(packed.body) < len(plain.body) / 2
    assert json.loads(gzip.decompress(packed.body)) == plain.json()

    small = request(s.nginx.port, "GET", "/api/tokens/summary", headers=gzip_ok, source=client)
    assert small.status == 200 and len(small.body) < 1024
    assert "content-encoding" not in small.headers

    # errors are JSON too: a big one would be packed the same way; the app itself never compresses
    for g in s.gunicorns:
        direct = request(g.port, "GET", big, headers=gzip_ok, source=client)
        assert direct.status == 200 and "content-encoding" not in direct.headers


def test_idle_client_connections_hold_no_worker_behind_nginx(shared_stack):
    """A sync worker reads its connection's request to the end before it takes the next one, so a
    client that connects and sends nothing (a browser's preconnect, a slow client) holds the worker
    until it sends or gunicorn's `timeout` kills it. nginx takes those connections itself and
    passes only whole requests: this is why gunicorn's sync workers serve behind it."""
    s, client = shared_stack, "127.0.0.16"
    workers = sum(g.workers for g in s.gunicorns)
    idle = [socket.create_connection(("127.0.0.1", s.nginx.port)) for _ in range(2 * workers)]
    try:
        answer = request(s.nginx.port, "GET", "/api/tokens/summary", source=client, timeout=3)
        assert answer.status == 200
    finally:
        for conn in idle:
            conn.close()
    # the same number of idle connections straight to one instance: it answers nothing meanwhile
    direct = s.gunicorns[0]
    idle = [socket.create_connection(("127.0.0.1", direct.port)) for _ in range(direct.workers)]
    try:
        with pytest.raises(TimeoutError):
            request(direct.port, "GET", "/healthz", source=client, timeout=1)
    finally:
        for conn in idle:
            conn.close()
    assert request(direct.port, "GET", "/healthz", source=client, timeout=3).status == 200
