"""The harness's free ports: never ones the kernel gives to outgoing connections, never twice."""

from __future__ import annotations

import random
import socket
import time

import pytest

from tests.procs import Gunicorn, _ephemeral_ports, free_port


def test_free_ports_are_outside_the_kernels_ephemeral_range_and_never_repeat():
    ephemeral = _ephemeral_ports()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert not [port for port in ports if port in ephemeral]


def test_a_port_someone_listens_on_is_not_handed_out(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        draws = []
        real_choice = random.SystemRandom.choice

        def choice(chooser, candidates):  # the busy port twice, then the chooser's own draws
            draws.append(busy if len(draws) < 2 else real_choice(chooser, candidates))
            return draws[-1]

        monkeypatch.setattr(random.SystemRandom, "choice", choice)
        port = free_port()
    assert draws[:2] == [busy, busy]
    assert port != busy


def test_a_gunicorn_that_cannot_bind_fails_its_start_at_once_and_leaves_nothing_behind(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = Gunicorn(
            {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}, workers=1, port=taken.getsockname()[1]
        )
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="exited while starting") as failed:
            server.start()
    assert time.monotonic() - started < 30  # gunicorn tries to bind for 5 s; the wait was 60
    assert "Address already in use" in str(failed.value)
    assert server.proc.returncode is not None and server._log.closed
