"""Metrics files are named after the process writing them: the pid is kept right across a fork."""

from __future__ import annotations

import os

from service.metrics_storage import current_pid


def test_current_pid_follows_a_fork_like_gunicorns_workers():
    assert current_pid() == os.getpid()
    child = os.fork()
    if child == 0:  # the child: no pytest machinery, only an exit code
        os._exit(0 if current_pid() == os.getpid() else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and current_pid() == os.getpid() != child
