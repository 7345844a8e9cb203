"""The OpenAPI 3.1 document at /openapi.json, assembled from the contract each view declares.

A view states its contract beside its route with `@operation(...)`: summary,
parameters, request body, answers. Bodies are pydantic models (the request
models also validate the input; the answer models only describe it), so each
is written once and fills `components/schemas`. The decorator records the
contract on the view function and returns the view itself: no wrapper, no cost
per request. `document(app)` walks the app's URL map, so a path is documented
exactly when a rule serves it (tests/test_openapi.py fails on any rule without
a contract).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

from flask import Blueprint, Flask, current_app, jsonify
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from pydantic_core import core_schema

from .parsing import UUID_PATTERN
from .route_table import DOCS, declare

bp = declare(Blueprint("openapi", __name__), DOCS)

VERSION = "3.1.0"
UUID_SCHEMA = {"type": "string", "format": "uuid", "pattern": f"^{UUID_PATTERN}$"}
ADMIN: tuple[dict[str, list[str]], ...] = ({"ApiKey": []}, {"Bearer": []})
SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "Bearer": {"type": "http", "scheme": "bearer"},
}
View = TypeVar("View", bound=Callable[..., Any])


class _Canonical:
    """A UUID in its canonical text only (service/parsing.py): braces, `urn:uuid:`, spaces or
    32 bare digits are refused. Both steps run in pydantic-core: a pattern, then the UUID."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.chain_schema(
            [core_schema.str_schema(pattern=f"^{UUID_PATTERN}$"), core_schema.uuid_schema()],
            serialization=core_schema.to_string_ser_schema(),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict:
        return dict(UUID_SCHEMA)


CanonicalUUID = Annotated[UUID, _Canonical]


def absent(description: str | None = None) -> Any:
    """A field an answer may leave out (not required, never null): for answer models only."""
    return Field(default=None, description=description)


class Body(BaseModel):
    """Base of the body models: extra fields are ignored, as the hand parsers did."""

    model_config = ConfigDict(extra="ignore")


ErrorCode = Literal[
    "VALIDATION_ERROR",
    "INVALID_JSON",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "CONFLICT",
    "POOL_EXHAUSTED",
    "STALE_LEASE",
    "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
    "RATE_LIMITED",
    "INTERNAL_ERROR",
    "SERVICE_UNAVAILABLE",
]


class Error(Body):
    """Every non-2xx answer, from every route (service/errors.py builds it)."""

    status: str = Field(description="The HTTP reason in snake_case")
    error_code: ErrorCode
    message: str
    error_id: CanonicalUUID = Field(description="Also in the log line of this error")
    request_id: str
    timestamp: datetime
    details: dict[str, Any]
    error: str = absent("429 only: 'Rate limit exceeded'")
    retry_after: int = absent("429 only: seconds to wait")


ERRORS = {
    400: "Invalid input (VALIDATION_ERROR or INVALID_JSON)",
    401: "Missing or invalid API key",
    403: "The API key lacks the admin role",
    404: "Token or pool not found",
    409: "CONFLICT: the token is not active, is held by another user, or the lease_id is not its current "
    "lease's; STALE_LEASE: the fencing_token is not the current lease's; POOL_EXHAUSTED: the pool is full "
    "and its policy is reject (Retry-After: seconds until its earliest lease ends)",
    413: "Request body too large",
    415: "Content-Type is not application/json",
    429: "Rate limit exceeded",
    503: "The database is unavailable",
}
COMMON = (413, 415, 429, 503)  # what any route taking a body may answer besides its own errors


@dataclass(frozen=True)
class Answer:
    """One documented answer: its description and body (a model, a JSON Schema, or none)."""

    description: str
    body: type[BaseModel] | dict | None = None
    media_type: str = "application/json"


@dataclass(frozen=True)
class Operation:
    """The contract of one view, recorded by `operation` and read by `document`."""

    summary: str
    answers: dict[int, Answer]
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    body_required: bool = True
    parameters: tuple[dict, ...] = ()
    admin: bool = False
    tags: tuple[str, ...] = ()
    operation_id: str | None = None
    models: tuple[type[BaseModel], ...] = field(default=(), compare=False)


def operation(
    summary: str,
    *,
    answers: dict[int, Answer],
    errors: Iterable[int] = (),
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    parameters: Iterable[dict] = (),
    admin: bool = False,
    tags: Iterable[str] = (),
    operation_id: str | None = None,
) -> Callable[[View], View]:
    """Record the contract of the view below it; returns that view unchanged.

    `errors` are status codes answered with the Error body and the standard
    description (an entry of `answers` with the same code wins).
    """
    models = tuple(
        model
        for model in (body, *(a.body for a in answers.values()))
        if isinstance(model, type) and issubclass(model, BaseModel)
    )
    contract = Operation(
        summary,
        dict(answers),
        tuple(errors),
        body,
        body_required,
        tuple(parameters),
        admin,
        tuple(tags),
        operation_id,
        models,
    )

    def record(view: View) -> View:
        view.openapi = contract  # type: ignore[attr-defined]
        return view

    return record


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(body: type[BaseModel] | dict | None, media_type: str) -> dict:
    if body is None:
        return {}
    schema = _ref(body.__name__) if isinstance(body, type) else body
    return {"content": {media_type: {"schema": schema}}}


def _operation_object(contract: Operation) -> dict:
    out: dict[str, Any] = {"summary": contract.summary}
    if contract.operation_id:
        out["operationId"] = contract.operation_id
    if contract.tags:
        out["tags"] = list(contract.tags)
    if contract.admin:
        out["security"] = list(ADMIN)
    if contract.parameters:
        out["parameters"] = list(contract.parameters)
    if contract.body is not None:
        out["requestBody"] = {
            "required": contract.body_required,
            **_content(contract.body, "application/json"),
        }
    responses: dict[int, dict] = {
        code: {"$ref": f"#/components/responses/E{code}"} for code in contract.errors
    }
    for code, answer in contract.answers.items():
        responses[code] = {"description": answer.description, **_content(answer.body, answer.media_type)}
    out["responses"] = {str(code): responses[code] for code in sorted(responses)}
    return out


class _Schemas(GenerateJsonSchema):
    """JSON Schema of the body models as the document shows them: no titles, no defaults."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> dict:
        return self.generate_inner(schema["schema"])

    def generate(self, schema: core_schema.CoreSchema, mode: Any = "validation") -> dict:
        out = super().generate(schema, mode)
        out.pop("title", None)
        return out


@functools.lru_cache(maxsize=8)
def _component_schemas(models: tuple[type[BaseModel], ...]) -> dict:
    _, defs = models_json_schema(
        [(model, "validation") for model in models],
        ref_template="#/components/schemas/{model}",
        schema_generator=_Schemas,
    )
    schemas = defs.get("$defs", {})
    for schema in schemas.values():
        schema.pop("title", None)
    return schemas


_ARGUMENT = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


def _path(rule: str) -> str:
    """A werkzeug rule as an OpenAPI path: `/api/tokens/<token_id:token_id>` is `/api/tokens/{token_id}`."""
    return _ARGUMENT.sub(r"{\1}", rule)


def contracts(app: Flask) -> dict[tuple[str, str], Operation | None]:
    """(path, method) -> the contract of the view serving it (None when it declares none).

    HEAD and OPTIONS (added by Flask to every rule) and the static files are left out.
    """
    found: dict[tuple[str, str], Operation | None] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found[(_path(rule.rule), method.lower())] = getattr(view, "openapi", None)
    return found


def _path_parameters(path: str, contract: Operation) -> list[dict]:
    """Arguments of the path that the contract does not declare (a blueprint's url_prefix,
    e.g. the pool of /api/pools/{pool}/tokens), as string path parameters."""
    declared = {p["name"] for p in contract.parameters if p.get("in") == "path"}
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{([^{}]+)}", path)
        if name not in declared
    ]


def document(app: Flask) -> dict:
    """The OpenAPI document of `app`: every rule whose view declares a contract.

    A view served at several paths (a blueprint registered twice) gets an
    operationId per path: the first keeps the contract's, the others add a
    prefix made of their path's first argument (`activate`, `poolActivate`).
    """
    paths: dict[str, dict] = {}
    models: dict[str, type[BaseModel]] = {"Error": Error}
    operation_ids: set[str] = set()
    for (path, method), contract in sorted(contracts(app).items(), key=lambda item: len(item[0][0])):
        if contract is None:
            continue
        out = _operation_object(contract)
        extra = _path_parameters(path, contract)
        if extra:  # the prefix names something that may not exist (an unknown pool): 404
            out["parameters"] = extra + out.get("parameters", [])
            responses = out["responses"] | {"404": {"$ref": "#/components/responses/E404"}}
            out["responses"] = dict(sorted(responses.items()))
        if "operationId" in out and out["operationId"] in operation_ids and extra:
            oid = out["operationId"]
            out["operationId"] = extra[0]["name"] + oid[0].upper() + oid[1:]
        operation_ids.add(out.get("operationId", ""))
        paths.setdefault(path, {})[method] = out
        models.update((m.__name__, m) for m in contract.models)
    return {
        "openapi": VERSION,
        "info": {
            "title": "tokenpool",
            "version": app.config["APP_VERSION"],
            "description": "Lease a fixed pool of tokens. Every error answers in the Error shape.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": _component_schemas(tuple(models[name] for name in sorted(models))),
            "responses": {
                f"E{code}": {"description": text, **_content(Error, "application/json")}
                for code, text in ERRORS.items()
            },
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


@bp.get("/openapi.json")
@operation(
    "This document",
    answers={200: Answer("The OpenAPI 3.1 document", {"type": "object"})},
    tags=("operations",),
)
def openapi():
    return jsonify(document(current_app))
