"""service/state.py: one typed state object per app, in place of string keys of `app.extensions`."""

from __future__ import annotations

import re
from pathlib import Path

from service.state import EXTENSION, AppState, app_state
from tests.conftest import make_app

SERVICE = Path(__file__).resolve().parent.parent / "service"


def test_every_attribute_of_the_state_is_set_by_the_factory(sqlite_url):
    app = make_app(sqlite_url, METRICS_ENABLED=True, SWEEPER_ENABLED=True)
    state = app_state(app)
    assert isinstance(state, AppState) and app.extensions[EXTENSION] is state
    for name in AppState.__annotations__:
        assert getattr(state, name) is not None, name
    for name in ("auth_failure_budget", "sweeper", "exporter"):
        assert getattr(state, name) is not None, name
    assert not [key for key in app.extensions if key.startswith(f"{EXTENSION}.")]


def test_two_apps_share_no_state(sqlite_url):
    one, two = make_app(sqlite_url), make_app(sqlite_url)
    assert app_state(one) is not app_state(two)
    assert app_state(one).key_cache is not app_state(two).key_cache


def test_no_module_keeps_its_objects_under_a_string_key_of_app_extensions():
    pattern = re.compile(r"""extensions(\[|\.get\(|\.setdefault\()\s*["']tokenpool\.""")
    offenders = [str(p.relative_to(SERVICE)) for p in SERVICE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
