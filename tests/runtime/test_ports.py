"""``free_port``: below the kernel's ephemeral range (where no client connection takes a port
between our choice and the bind), bindable; the kernel chooses when that range leaves no room."""

from __future__ import annotations

import socket

import pytest

from dynamo.runtime import ports


def test_a_chosen_port_is_below_the_ephemeral_range_and_free() -> None:
    chosen = {ports.free_port() for _ in range(20)}
    assert all(ports.LOWEST_CHOSEN_PORT <= p < ports.ephemeral_low() for p in chosen), chosen
    assert len(chosen) > 1  # random, not one port handed to everyone
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", chosen.pop()))


def test_with_no_room_below_the_ephemeral_range_the_kernel_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ephemeral_low", lambda: ports.LOWEST_CHOSEN_PORT + 10)
    chosen = {ports.free_port() for _ in range(5)}
    assert all(p >= ports.LOWEST_CHOSEN_PORT + 10 for p in chosen), chosen
