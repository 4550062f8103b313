"""``--http-workers 2``: two frontend processes share one port, both serve, SIGTERM stops all."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.support.graph import Frontend, discovery_env, start_mocker
from tests.support.procs import wait_until

pytestmark = [pytest.mark.timeout(120)]
MODEL = "smol-workers"


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return out


def _listening_inodes(port: int) -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                    inodes.add(int(fields[9]))
    return inodes


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def test_two_http_workers_share_the_port_and_stop_together(log_dir: Path, smollm2_tokenizer_dir: Path):
    env = discovery_env("file")
    env["DYN_NAMESPACE"] = "http-workers"
    env["DYN_FILE_DISCOVERY_DIR"] = str(log_dir / "discovery-http-workers")
    mocker = start_mocker(
        log_dir,
        env,
        smollm2_tokenizer_dir,
        "mocker-http-workers",
        "--model-name",
        MODEL,
        "--speedup-ratio",
        "50",
    )
    frontend = Frontend(log_dir, env, "--http-workers", "2", name="frontend-http-workers")
    try:
        workers = _children(frontend.proc.pid)
        assert len(workers) == 2

        def request() -> httpx.Response:
            # A new connection each time, so that the kernel may hand it to either process.
            with httpx.Client(timeout=10) as client:
                return client.post(
                    f"{frontend.url}/v1/chat/completions",
                    json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                )

        # Each process watches discovery on its own: wait until both serve the model.
        wait_until(lambda: all(request().status_code == 200 for _ in range(12)), 60, "both processes serving")
        # One SO_REUSEPORT socket per process, each listening once its process has started.
        wait_until(lambda: len(_listening_inodes(frontend.port)) == 2, 60, "two listening sockets")
        listening = _listening_inodes(frontend.port)
        for pid in workers:
            assert _socket_inodes(pid) & listening
        resp = request()
        assert resp.json()["usage"]["completion_tokens"] == 4

        frontend.proc.signal(signal.SIGTERM)
        # Ended by the signal, as a single uvicorn process is (uvicorn re-raises it after shutdown).
        assert frontend.proc.proc.wait(timeout=30) in (0, -signal.SIGTERM)
        wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in workers), 10, "workers gone")
    finally:
        frontend.stop()
        mocker.stop()
