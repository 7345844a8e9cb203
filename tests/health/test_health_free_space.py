"""checks.free_space: the file system holding a path, created or not, against a floor."""

from __future__ import annotations

import shutil

from service.health import checks


def test_a_path_not_created_yet_is_measured_at_its_nearest_existing_parent(tmp_path):
    result = checks.free_space(str(tmp_path / "logs" / "not-yet" / "app.log"), min_free_ratio=0)
    usage = shutil.disk_usage(tmp_path)
    assert result["status"] == checks.HEALTHY
    assert abs(result["free_mb"] - usage.free // 2**20) <= 16  # others write meanwhile
    assert 0 < result["free_ratio"] <= 1


def test_degraded_below_either_floor(tmp_path):
    total = shutil.disk_usage(tmp_path).total
    assert checks.free_space(str(tmp_path), min_free_bytes=total + 1)["status"] == checks.DEGRADED
    assert checks.free_space(str(tmp_path), min_free_ratio=1.01)["status"] == checks.DEGRADED
    assert checks.free_space(str(tmp_path), min_free_ratio=0, min_free_bytes=1)["status"] == checks.HEALTHY


def test_no_host_path_in_the_result(tmp_path):
    assert str(tmp_path) not in repr(checks.free_space(str(tmp_path)))
