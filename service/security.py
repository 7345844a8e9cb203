"""Who may call admin routes: API keys from `X-API-Key` or `Authorization: Bearer`."""

from __future__ import annotations

import hashlib
import hmac

from flask import current_app, request

from .errors import Unauthorized


def presented_key() -> str | None:
    """The API key the caller sent, if any."""
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


def hash_key(key: str) -> str:
    """The stored form of an API key: its SHA-256 hex digest."""
    return hashlib.sha256(key.encode()).hexdigest()


def require_admin() -> None:
    """Allow the call only with an admin key; open in development and testing when none is set.

    Raises Unauthorized.
    """
    admin_key = current_app.config.get("ADMIN_API_KEY")
    if not admin_key and current_app.config["APP_ENV"] != "production":
        return
    key = presented_key()
    if key is None:
        raise Unauthorized("An admin API key is required.", reason="missing_key")
    if not admin_key or not hmac.compare_digest(hash_key(key), hash_key(admin_key)):
        raise Unauthorized("Invalid API key.", reason="invalid_key")
