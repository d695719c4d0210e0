"""Test servers' ports stay out of the kernel's ephemeral range, where a closed probe socket's port is
handed to the next outbound connection (CI lost a Ray dashboard to that race)."""

from __future__ import annotations

import socket

from bench.ports import FIRST, _ephemeral_start, free_port


def test_ports_are_bindable_outside_the_ephemeral_range_and_never_handed_twice() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(FIRST <= port < _ephemeral_start() for port in ports)
    for port in ports[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # raises if the port were taken


def test_a_kernel_assigned_port_is_never_handed_out() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        kernel_port = taken.getsockname()[1]
        assert kernel_port >= _ephemeral_start()
        assert kernel_port not in {free_port() for _ in range(200)}
