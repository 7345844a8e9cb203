"""Fuzzing the documented API with schemathesis, against the in-process app on PostgreSQL.

Every operation of `/openapi.json` gets a bounded, deterministic set of generated
requests (valid and invalid ones). Every answer must be no 5xx, carry a documented
status code and content type, and match the documented schema (the Error shape for
every non-2xx). Path parameters are drawn half from the real pool, so the 200 paths
are fuzzed too, not only 404s; a second test walks the success path of every
operation (activate, renew, release, reads, clear) and validates each answer.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import text

from service.extensions import db
from tests.conftest import make_app, reset_database
from tests.helpers import POOL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,  # with ADMIN_API_KEY set, admin operations refuse a missing or invalid key
]
ADMIN_KEY = "fuzz-admin-key-0123456789"
ADMIN = {"X-API-Key": ADMIN_KEY}
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))


@pytest.fixture
def fuzz_app(postgres_url):
    app = make_app(
        postgres_url,
        MAX_ACTIVE_TOKENS=POOL,
        TOKEN_LIFETIME_SECONDS=60,
        POOL_SIZE=2,
        ADMIN_API_KEY=ADMIN_KEY,
    )
    reset_database(app, POOL)
    return app


def _token_ids(app) -> list[str]:
    with app.app_context(), db.engine.connect() as conn:
        return [str(r[0]) for r in conn.execute(text("SELECT id FROM tokens ORDER BY id"))]


@pytest.fixture
def api_schema(fuzz_app):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)
    real_ids = _token_ids(fuzz_app)

    @schema.hook
    def flatmap_path_parameters(context, path_parameters):
        """Half of the generated token ids are replaced by ids of the pool, to reach the 200 paths."""
        if not path_parameters or "token_id" not in path_parameters:
            return st.just(path_parameters)
        real = st.sampled_from(real_ids).map(lambda tid: {**path_parameters, "token_id": tid})
        return st.one_of(st.just(path_parameters), real)

    seen: Counter = Counter()

    @schema.hook
    def after_call(context, case, response):
        seen[(case.operation.label, response.status_code)] += 1

    yield schema
    print(f"\nschemathesis answers by operation and status ({sum(seen.values())} requests):")
    for (label, status), count in sorted(seen.items()):
        print(f"  {label:45} {status} x{count}")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case):
    case.call_and_validate(headers=ADMIN, checks=CHECKS)


def test_success_paths_match_the_documented_schema(fuzz_app):
    """Hand-made cases for the 200 answers random data rarely reaches (renew and release by the holder)."""
    openapi = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)
    holder, other = str(uuid.uuid4()), str(uuid.uuid4())

    def call(path: str, method: str, expected: int, **kwargs):
        case = openapi[path][method].Case(**kwargs)
        response = case.call(headers=ADMIN)
        assert response.status_code == expected, (method, path, response.status_code, response.text)
        case.validate_response(response, checks=CHECKS, headers=ADMIN)
        return response.json()

    lease = call("/api/tokens/activate", "POST", 200, body={"user_id": holder})
    tid = {"token_id": lease["token_id"]}
    assert call("/api/tokens/activate", "POST", 200, body={"user_id": holder}) == lease
    call("/api/tokens/activate", "POST", 200, body={"user_id": other})
    assert call("/api/tokens/{token_id}", "GET", 200, path_parameters=tid)["state"] == "active"
    proof = {"user_id": holder, "lease_id": lease["lease_id"]}
    guess = {"user_id": holder, "lease_id": str(uuid.uuid4())}
    renewed = call("/api/tokens/{token_id}/renew", "POST", 200, path_parameters=tid, body=proof)
    assert renewed["lease_id"] == lease["lease_id"]
    for path in ("/api/tokens/{token_id}/renew", "/api/tokens/{token_id}/release"):
        call(path, "POST", 409, path_parameters=tid, body=proof | {"user_id": other})
        call(path, "POST", 409, path_parameters=tid, body=guess)
        call(path, "POST", 400, path_parameters=tid, body={"user_id": holder})
    released = call("/api/tokens/{token_id}/release", "POST", 200, path_parameters=tid, body=proof)
    assert released["state"] == "available"
    call("/api/tokens/{token_id}/release", "POST", 409, path_parameters=tid, body=proof)
    for _ in range(POOL + 1):  # free tokens never leased go first; then the released one comes back
        if (
            call("/api/tokens/activate", "POST", 200, body={"user_id": str(uuid.uuid4())})["token_id"]
            == tid["token_id"]
        ):
            break
    usages = call("/api/tokens/{token_id}/usages", "GET", 200, path_parameters=tid, query={"limit": 1})
    assert usages["next_cursor"]
    call(
        "/api/tokens/{token_id}/usages",
        "GET",
        200,
        path_parameters=tid,
        query={"limit": 1, "cursor": usages["next_cursor"]},
    )
    page = call("/api/tokens", "GET", 200, query={"limit": 2, "state": "all"})
    call("/api/tokens", "GET", 200, query={"limit": 2, "cursor": page["next_cursor"]})
    call("/api/tokens", "GET", 200, query={"state": "active"})
    call("/api/tokens", "GET", 400, query={"cursor": "not-a-cursor"})
    call("/api/tokens/summary", "GET", 200)
    assert call("/api/tokens/active", "DELETE", 200)["cleared_count"] >= 1
    call("/api/tokens/{token_id}", "GET", 404, path_parameters={"token_id": str(uuid.uuid4())})
