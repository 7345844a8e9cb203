"""Requests per second through nginx versus direct to gunicorn: printed, never asserted on timing.

The same measurement as `tests/e2e/measure_nginx.py` (runnable by hand) on the test's own stack.
"""

from __future__ import annotations

import pytest

from tests.e2e.measure_nginx import measure, table
from tests.e2e.stack import WRK

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.skipif(WRK is None, reason="wrk is not installed (apt-get install -y wrk)")
def test_requests_per_second_through_nginx_versus_direct(stack, capsys):
    s = stack()
    results = measure(s, duration="5s", connections=8)
    with capsys.disabled():  # shown with or without -s: the figures are the point
        print("\n" + table(results, 8, "5s"))
    for r in results:  # the run itself must be sound: figures from errors would be meaningless
        assert r["rps"] is not None, r["output"]
        assert r["non_2xx"] == 0 and not r["errors"], r["output"]
