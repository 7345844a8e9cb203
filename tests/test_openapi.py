"""The OpenAPI document is assembled from the contracts beside the routes: no rule undocumented."""

from __future__ import annotations

import re

import pytest

from service.openapi import Answer, contracts, document, operation
from service.tokens.schemas import ActivateBody, HolderBody
from tests.conftest import make_app

ARGUMENT = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


@pytest.fixture
def doc_app(sqlite_url):
    return make_app(sqlite_url, ENABLE_TEST_HOOKS=True, METRICS_TOKEN="scrape-secret")


def served(app) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every rule of every blueprint, read from the URL map itself."""
    return {
        (ARGUMENT.sub(r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def documented(doc: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, operations in doc["paths"].items() for method in operations}


def test_every_rule_of_every_blueprint_declares_a_contract(doc_app):
    undocumented = sorted(key for key, contract in contracts(doc_app).items() if contract is None)
    assert undocumented == []


def test_the_document_has_exactly_the_served_paths_and_methods(doc_app):
    doc = doc_app.test_client().get("/openapi.json").get_json()
    assert documented(doc) == served(doc_app)
    assert {rule.endpoint.split(".")[0] for rule in doc_app.url_map.iter_rules()} >= {
        "api",
        "tokens",
        "health",
        "monitoring",
        "prometheus_metrics",  # the exporter's /metrics, on the app itself
        "openapi",
    }


def test_a_rule_without_a_contract_is_left_out_and_reported(doc_app):
    doc_app.add_url_rule("/undocumented", "undocumented", lambda: "")
    assert contracts(doc_app)[("/undocumented", "get")] is None
    with doc_app.app_context():
        doc = document(doc_app)
    assert ("/undocumented", "get") in served(doc_app) - documented(doc)


def test_every_reference_resolves_within_the_document(doc_app):
    with doc_app.app_context():
        doc = document(doc_app)
    refs: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        target = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert isinstance(target, dict), ref
    used = {ref.rsplit("/", 1)[1] for ref in refs if ref.startswith("#/components/schemas/")}
    assert used == set(doc["components"]["schemas"])  # no component nobody uses


def test_request_bodies_are_the_models_that_validate_them(doc_app):
    with doc_app.app_context():
        doc = document(doc_app)
    schemas, paths = doc["components"]["schemas"], doc["paths"]

    def body_of(path: str) -> str:
        return paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]

    assert body_of("/api/tokens/activate").endswith("/ActivateBody")
    assert body_of("/api/tokens/{token_id}/renew").endswith("/HolderBody")
    assert paths["/api/tokens/{token_id}/release"]["post"]["requestBody"]["required"] is False
    assert schemas["ActivateBody"]["required"] == list(ActivateBody.model_fields) == ["user_id"]
    assert schemas["HolderBody"]["required"] == ["user_id", "lease_id"]
    assert list(HolderBody.model_fields) == ["user_id", "lease_id", "fencing_token"]  # the last optional
    user_id = schemas["ActivateBody"]["properties"]["user_id"]
    assert user_id["format"] == "uuid" and re.fullmatch(
        user_id["pattern"][1:-1], "0" * 8 + "-0000" * 3 + "-" + "0" * 12
    )


def test_operation_records_the_contract_and_returns_the_view_itself():
    def view():
        return "ok"

    decorated = operation("A view", answers={200: Answer("fine")}, errors=(429,))(view)
    assert decorated is view
    assert view.openapi.summary == "A view" and view.openapi.errors == (429,)
