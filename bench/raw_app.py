"""Minimal raw-SQL activation: the floor cost of one activation in Python.

Flask + psycopg 3, one autocommit connection per worker, the same PL/pgSQL
function the service calls. No pool, no ORM, no middleware, no logging.

    DATABASE_URL=postgresql://... gunicorn -c bench/gunicorn_bare.conf.py -w 2 \
        -b 127.0.0.1:PORT bench.raw_app:app
"""

from __future__ import annotations

import os
import threading
import uuid

import psycopg
from flask import Flask, jsonify, request

SQL = (
    "SELECT token_id, activated_at, expires_at, outcome, lease_id"
    " FROM tokenpool_activate(%s::uuid, NULL, make_interval(secs => 120))"
)

app = Flask(__name__)
_local = threading.local()  # a connection per thread (gthread) or per worker (sync)


def _dsn() -> str:
    url = os.environ["DATABASE_URL"]
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def connection() -> psycopg.Connection:
    """This thread's connection, opened on first use (after gunicorn's fork)."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(_dsn(), autocommit=True)
    return conn


@app.post("/activate")
def activate():
    body = request.get_json(silent=True) or {}
    try:
        user_id = uuid.UUID(str(body["user_id"]))
    except (KeyError, ValueError):
        return jsonify({"error": "user_id must be a UUID"}), 400
    row = connection().execute(SQL, (user_id,)).fetchone()
    token_id, activated_at, expires_at, outcome, lease_id = row
    answer = {
        "token_id": str(token_id),
        "user_id": str(user_id),
        "activated_at": activated_at.isoformat(),
        "expires_at": expires_at.isoformat(),
    }
    if outcome != "existing":  # as the service: a lease's secret only to the caller granted it
        answer["lease_id"] = str(lease_id)
    return jsonify(answer)
