"""The rate-limit response headers: legacy `X-RateLimit-*` and the IETF `RateLimit-Policy` / `RateLimit`.

Legacy, per limit hit: `X-RateLimit-Limit`, `-Remaining`, `-Reset` (Unix time,
whole seconds rounded up) of the first limit, and for keyed callers the same
three suffixed `-Minute` / `-Hour` for each window.
IETF (draft-ietf-httpapi-ratelimit-headers-10, structured fields of RFC 9651):
`RateLimit-Policy: "key-minute";q=600;w=60, "key-hour";q=20000;w=3600` names
each policy with its quota `q` and window `w` in seconds, and
`RateLimit: "key-minute";r=599;t=41, "key-hour";r=19999;t=3041` gives what is
left `r` and the seconds until the window resets `t`, rounded up.
Every reset written here is never earlier than the moment the limit admits
again. The formats live only here, so a later draft's syntax is one change.
"""

from __future__ import annotations

import math

LEGACY = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
WINDOWS = {60: "Minute", 3600: "Hour"}
LEGACY_OF_WINDOW = {s: tuple(f"{name}-{suffix}" for name in LEGACY) for s, suffix in WINDOWS.items()}
POLICY, STATE = "RateLimit-Policy", "RateLimit"
# the policy name of each kind of limit (PolicyLimiter.limits_for_request)
POLICY_NAMES = {"ip": "ip-minute", "api_key_minute": "key-minute", "api_key_hour": "key-hour"}
# what a browser script may read of a cross-origin answer (Access-Control-Expose-Headers)
EXPOSED = (
    *LEGACY,
    *(name for names in LEGACY_OF_WINDOW.values() for name in names),
    POLICY,
    STATE,
    "Retry-After",
)

_specs: dict[tuple[str, int, int], tuple] = {}


def _spec(kind: str, amount: int, window: int) -> tuple[str, str, str, tuple[str, ...]]:
    """(limit as text, RateLimit-Policy item, RateLimit item prefix, legacy per-window names), made once."""
    key = (kind, amount, window)
    spec = _specs.get(key)
    if spec is None:
        name = POLICY_NAMES[kind]
        per_window = LEGACY_OF_WINDOW[window] if kind != "ip" else ()
        spec = _specs[key] = (str(amount), f'"{name}";q={amount};w={window}', f'"{name}";r=', per_window)
    return spec


def seconds_until(reset_at: float, now: float) -> int:
    """Whole seconds from `now` to `reset_at`, rounded up: waiting that long always reaches the reset."""
    return max(0, math.ceil(reset_at - now))


def rate_limit_headers(hits: list[tuple[str, int, int, int, float]], now: float) -> list[tuple[str, str]]:
    """The headers of the limits one request hit.

    `hits`: (kind, limit, window seconds, remaining, reset_at Unix time) per
    limit, in the order they were hit; `now`: Unix time of the answer.
    """
    headers: list[tuple[str, str]] = []
    policies, states = [], []
    for kind, amount, window, remaining, reset_at in hits:
        limit, policy, prefix, per_window = _spec(kind, amount, window)
        left, reset = str(remaining), str(math.ceil(reset_at))
        if not headers:
            headers += ((LEGACY[0], limit), (LEGACY[1], left), (LEGACY[2], reset))
        if per_window:
            headers += ((per_window[0], limit), (per_window[1], left), (per_window[2], reset))
        policies.append(policy)
        states.append(f"{prefix}{left};t={seconds_until(reset_at, now)}")
    headers.append((POLICY, ", ".join(policies)))
    headers.append((STATE, ", ".join(states)))
    return headers
