"""Choosing a TCP port for a process that will bind it soon after (not yet on any request's journey).

A port from ``bind(0)`` comes from the kernel's ephemeral range, the same range every outgoing
connection on the machine takes its local port from: between the choice and the bind, any client
(an HTTP request, an etcd or NATS connection, another engine's ZMQ socket) can take it, and the
process we started fails with "address already in use". ``free_port`` chooses at random below that
range instead, where only an explicit bind can collide, and checks the port is free right now.
Used by engine adapters (ports an engine binds for itself), the local graph runner (every replica's
ports) and the tests.
"""

from __future__ import annotations

import random
import socket

LOWEST_CHOSEN_PORT = 10000
_EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
_ATTEMPTS = 64
_MIN_CHOICES = 1000  # fewer ports than this below the ephemeral range: let the kernel choose


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768, Linux's default, when unreadable)."""
    try:
        with open(_EPHEMERAL_RANGE) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "") -> int:
    """A TCP port free on ``host`` (every interface by default) right now, below the ephemeral range.

    Falls back to a port the kernel chooses when none of a few random candidates is free, or when
    the ephemeral range leaves too few ports below it to choose from.
    """
    low, high = LOWEST_CHOSEN_PORT, ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(_ATTEMPTS if high - low >= _MIN_CHOICES else 0):
        port = rng.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
