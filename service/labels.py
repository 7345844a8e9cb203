"""Bounded label values: what the service writes into metric labels and monitoring keys.

A label value never comes from the request as sent: a client chooses its
method, path and headers freely, and every distinct label value is a new
series in Prometheus (and in the multiprocess files) or a new field in the
monitoring store. Each function here maps a request detail onto a small set
the service defines. prometheus-flask-exporter's `group_by`/label callables
can take them as they are.
"""

from __future__ import annotations

import re

# RFC 9110 section 9 and PATCH (RFC 5789): the methods a label may name
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"))
OTHER = "other"
UNMATCHED = "<unmatched>"
CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_TEMPLATES: dict[str, str] = {}


def bounded_method(method: str) -> str:
    """The request method if it is a standard one (exact, upper case), else `other`."""
    return method if method in METHODS else OTHER


def url_rule(req) -> str:
    """The route template, converters dropped (`/api/tokens/<token_id>`); `<unmatched>` without a route.

    Never the raw path: a million token ids must not become a million series.
    """
    if req.url_rule is None:
        return UNMATCHED
    rule = req.url_rule.rule
    template = _TEMPLATES.get(rule)
    if template is None:
        template = _TEMPLATES[rule] = CONVERTER.sub(r"<\1>", rule)
    return template
