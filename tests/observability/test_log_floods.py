"""An outage must not flood the log: one line per kind of failure per window, then a count."""

from __future__ import annotations

import json
import logging

import pytest

from service.logging_setup import RepeatFilter
from tests.conftest import make_app
from tests.helpers import Ticks, user
from tests.procs import free_port


@pytest.fixture
def outage(tmp_path):
    """An app whose PostgreSQL is down (nothing listens on its port), logging to a file."""
    path, ticks = tmp_path / "app.log", Ticks()
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone"
    app = make_app(dead, LOG_FILE=str(path), LOG_LEVEL="INFO", LOG_CLOCK=ticks, LOG_REPEAT_WINDOW_SECONDS=5)

    def lines():
        return [json.loads(line) for line in path.read_text().splitlines()]

    return app, lines, ticks


def test_an_outage_writes_one_error_line_per_window_and_a_count(outage):
    app, lines, ticks = outage
    client = app.test_client()
    answers = [client.get("/api/tokens/summary") for _ in range(40)]
    answers += [client.post("/api/tokens/activate", json={"user_id": user()}) for _ in range(10)]
    assert {r.status_code for r in answers} == {503}
    errors = [x for x in lines() if x["logger"] == "tokenpool.errors"]
    assert len(errors) == 1
    assert errors[0]["level"] == "ERROR" and "OperationalError" in errors[0]["exc_info"]
    access = [x for x in lines() if x["logger"] == "tokenpool.access"]
    assert len(access) == 50 and {x["status"] for x in access} == {503}
    # every answer's error_id is findable: on its access line
    assert [x["error_id"] for x in access] == [r.get_json()["error_id"] for r in answers]
    assert errors[0]["error_id"] == answers[0].get_json()["error_id"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'flask_http_request_total{method="GET",status="503"} 40.0' in metrics
    assert 'flask_http_request_total{method="POST",status="503"} 10.0' in metrics

    ticks.now += 6  # the window closes; the next line written brings the summary
    client.get("/nothing/here")
    summaries = [x for x in lines() if x.get("event") == "log_repeats"]
    summary = [x for x in summaries if x["logger"] == "tokenpool.errors"]
    assert len(summary) == 1
    assert summary[0]["repeats"] == 49 and summary[0]["error_code"] == "SERVICE_UNAVAILABLE"
    assert summary[0]["level"] == "ERROR" and summary[0]["window_seconds"] == 5
    assert "49 more like this" in summary[0]["message"]
    events = [x for x in lines() if x["logger"] == "tokenpool.events"]  # failed activations: one kind
    assert len(events) == 2 and events[1] in summaries
    assert events[0]["reason"] == events[1]["reason"] and events[1]["repeats"] == 9

    client.get("/api/tokens/summary")  # a new window: the first failure is written again, whole
    errors = [x for x in lines() if x["logger"] == "tokenpool.errors" and x.get("status") == 503]
    assert len(errors) == 2 and "OperationalError" in errors[1]["exc_info"]


def test_another_kind_of_failure_is_still_written(outage):
    app, lines, _ = outage
    client = app.test_client()

    def boom():
        raise RuntimeError("a bug, not the outage")

    app.add_url_rule("/boom", "boom", boom)
    for _ in range(20):
        client.get("/api/tokens/summary")
        client.get("/api/tokens/not-a-uuid")
    client.get("/boom")
    errors = [x for x in lines() if x["logger"] == "tokenpool.errors"]
    codes = sorted(x["error_code"] for x in errors)
    assert codes == ["INTERNAL_ERROR", "SERVICE_UNAVAILABLE", "VALIDATION_ERROR"]
    assert "RuntimeError: a bug" in next(x for x in errors if x["status"] == 500)["exc_info"]


def test_open_windows_are_summarised_at_flush(tmp_path):
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep()
    repeat = RepeatFilter(handler, 5, clock=lambda: 0.0)
    handler.addFilter(repeat)
    log = logging.getLogger("tokenpool.test_floods")
    log.propagate = False
    log.addHandler(handler)
    try:
        for n in range(30):
            log.warning("disk full on %s", "/var/log", extra={"reason": "enospc"})
            log.info("request %d", n)  # below WARNING: never held back
        log.warning("another kind")
        repeat.flush()
    finally:
        log.removeHandler(handler)
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "disk full on /var/log",
        "another kind",
        "29 more like this in the last 5 s: disk full on /var/log",
    ]
    assert warnings[2].repeats == 29 and warnings[2].reason == "enospc"
    assert sum(r.levelno == logging.INFO for r in records) == 30
