"""A real frontend with one real mocker worker (file discovery), shared by the hostile-input tests.

The frontend runs with small limits so that the tests reach them quickly: ``MAX_BODY`` bytes of
body, ``MAX_HEADER`` bytes of request head, ``HEAD_TIMEOUT`` / ``BODY_TIMEOUT`` seconds for a client
to send its head / body. ``served.healthy()`` is what every test ends with: a normal chat request
still answers, and the frontend logged no unexpected error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.graph import Frontend, discovery_env, start_mocker
from tests.support.procs import ManagedProcess

MODEL = "smol-fuzz"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
MAX_BODY = 256 * 1024
MAX_HEADER = 16 * 1024
HEAD_TIMEOUT = 2.0
BODY_TIMEOUT = 3.0
MAX_MODEL_LEN = 256  # tokens: bounds what one fuzzed request may ask the engine for


@dataclass
class Served:
    frontend: Frontend
    worker: ManagedProcess

    @property
    def url(self) -> str:
        return self.frontend.url

    @property
    def port(self) -> int:
        return self.frontend.port

    def unexpected_errors(self) -> list[str]:
        """Lines of the frontend's log that report an unexpected error (a 500 or a crashed task)."""
        return [
            line
            for line in self.frontend.proc.log_text().splitlines()
            if "unexpected error" in line or "Traceback" in line or "Exception in ASGI" in line
        ]

    def healthy(self) -> None:
        """A normal chat request answers, both processes live, and nothing failed unexpectedly."""
        assert self.frontend.proc.alive(), self.frontend.proc.tail()
        assert self.worker.alive(), self.worker.tail()
        body = {"model": MODEL, "messages": CHAT, "max_tokens": 4}
        r = httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 4
        assert self.unexpected_errors() == [], self.frontend.proc.tail(80)


@contextlib.contextmanager
def mocker_and_frontend(
    log_dir: Path,
    tokenizer_dir: Path,
    discovery_dir: Path,
    tag: str,
    mocker_flags: tuple[str, ...] = (),
    frontend_flags: tuple[str, ...] = (),
) -> Iterator[Served]:
    """A fast mocker serving ``MODEL`` and a frontend over it (file discovery), both stopped after."""
    env = discovery_env("file")
    env["DYN_FILE_DISCOVERY_DIR"] = str(discovery_dir)
    worker = start_mocker(
        log_dir,
        env,
        tokenizer_dir,
        f"mocker-{tag}",
        "--model-name",
        MODEL,
        "--speedup-ratio",
        "100",
        "--decode-speedup-ratio",
        "100",
        *mocker_flags,
    )
    frontend = Frontend(log_dir, env, *frontend_flags, name=f"frontend-{tag}")
    try:
        frontend.wait_for_instances(1)
        yield Served(frontend, worker)
    finally:
        frontend.stop()
        worker.stop()


@pytest.fixture(scope="package")
def served(log_dir: Path, smollm2_tokenizer_dir: Path, tmp_path_factory) -> Iterator[Served]:
    limits = (
        "--max-body-size",
        str(MAX_BODY),
        "--http-max-header-size",
        str(MAX_HEADER),
        "--http-header-timeout",
        str(HEAD_TIMEOUT),
        "--http-body-timeout",
        str(BODY_TIMEOUT),
    )
    with mocker_and_frontend(
        log_dir,
        smollm2_tokenizer_dir,
        tmp_path_factory.mktemp("discovery-fuzz"),
        "fuzz",
        ("--max-model-len", str(MAX_MODEL_LEN)),
        limits,
    ) as served:
        yield served
