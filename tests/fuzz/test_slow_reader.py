"""A client that stops reading its response (real frontend + mocker): once the frontend's unsent
output is over the transport's high-water mark, ``--http-write-timeout`` seconds without the client
taking any drops the connection and cancels the request (its engine work with it), while other
clients are served meanwhile. Without the bound, such a client holds an engine sequence for as
long as it keeps the socket open.

Its own frontend, with the mocker's full context (8192 tokens), so that one response outgrows the
kernel's socket buffers (several MiB on loopback): 128 choices of up to 4000 tokens.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.conftest import CHAT, MODEL, Served, mocker_and_frontend
from tests.fuzz.test_hostile_input import Background, request_head
from tests.support.graph import metric_value

pytestmark = [pytest.mark.timeout(120)]
WRITE_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def roomy(log_dir: Path, smollm2_tokenizer_dir: Path, tmp_path_factory) -> Iterator[Served]:
    with mocker_and_frontend(
        log_dir,
        smollm2_tokenizer_dir,
        tmp_path_factory.mktemp("discovery-slow-reader"),
        "slow-reader",
        frontend_flags=("--http-write-timeout", str(WRITE_TIMEOUT)),
    ) as served:
        yield served


def streams(served: Served, status: str | None = None) -> float:
    """Streamed requests ended so far (with ``status`` if given): the background requests are
    unary, so this counts only the hostile client's request."""
    labels = {"model": MODEL, "request_type": "stream"} | ({"status": status} if status else {})
    return metric_value(served.frontend.metrics(), "dynamo_frontend_requests_total", **labels)


def inflight(served: Served) -> float:
    return metric_value(served.frontend.metrics(), "dynamo_frontend_inflight_requests", model=MODEL)


def test_a_client_that_stops_reading_is_dropped_and_its_request_cancelled(roomy: Served):
    body = json.dumps(
        {"model": MODEL, "messages": CHAT, "max_tokens": 4000, "n": 128, "stream": True, "ignore_eos": True}
    ).encode()
    head = request_head(
        "POST", "/v1/chat/completions", {"Content-Type": "application/json", "Content-Length": str(len(body))}
    )
    ended_before = streams(roomy)
    gone_before = streams(roomy, "499")
    # The frontend is busy writing 128 streams until it drops the client: others wait longer.
    with Background(roomy, max_latency=10.0):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", roomy.port))
        try:
            sock.sendall(head + body)
            started = time.monotonic()
            deadline = started + 30
            # Never read: the request must end (cancelled, counted 499) within the write timeout
            # once the buffers are full, not when the client finally closes.
            while streams(roomy) == ended_before and time.monotonic() < deadline:
                time.sleep(0.2)
            ended = time.monotonic() - started
            # Counted 499 while this client still holds its socket open (it closes only below): the
            # frontend dropped it for not reading. How soon depends on how fast the mocker fills the
            # buffers (5 s alone, 20 s beside a starting vLLM engine), so no time is asserted.
            assert streams(roomy, "499") == gone_before + 1, (
                f"the request of a client that does not read was not cancelled within {ended:.1f} s"
            )
        finally:
            sock.close()
    # Nothing of it is left in flight once the background client stops too.
    deadline = time.monotonic() + 10
    while inflight(roomy) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert inflight(roomy) == 0
    roomy.healthy()
