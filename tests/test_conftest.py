"""The test harness itself: apps are disposed whichever way a test module imports conftest."""

from __future__ import annotations

from pathlib import Path

import tests.conftest


def root_conftest_as_pytest_loaded_it(config):
    path = Path(tests.conftest.__file__).resolve()
    (plugin,) = [
        p
        for p in config.pluginmanager.get_plugins()
        if getattr(p, "__file__", None) and Path(p.__file__).resolve() == path
    ]
    return plugin


def test_both_imports_of_conftest_share_one_list_of_apps_to_dispose(request):
    loaded = root_conftest_as_pytest_loaded_it(request.config)
    assert loaded is not tests.conftest  # pytest's `conftest` and the tests' `tests.conftest` ...
    assert loaded.BUILT_APPS is tests.conftest.BUILT_APPS  # ... dispose from one list


def test_an_app_built_through_tests_conftest_is_disposed_after_the_test(request, sqlite_url):
    app = tests.conftest.make_app(sqlite_url)
    assert app in root_conftest_as_pytest_loaded_it(request.config).BUILT_APPS  # its autouse fixture's list
