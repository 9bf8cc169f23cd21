"""Addresses on this machine: a free port, and where to connect to a server bound to a wildcard."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def probe_host(host: str) -> str:
    """The address to connect to for a server bound to ``host`` (a wildcard bind means loopback)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
