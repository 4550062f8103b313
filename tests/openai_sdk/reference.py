"""vLLM's own OpenAI server as the reference for greedy (and seeded) outputs, token for token.

``REFERENCE_REQUESTS`` are sent once, one after the other, to ``python -m
vllm.entrypoints.openai.api_server`` started on the same engine flags as our worker (``ENGINE_FLAGS``);
the answers are kept and the server stopped before our stack starts, so only one engine runs at a
time. ``test_vllm_equality.py`` sends the same requests through our frontend and compares
``comparable()`` views: texts and tokens exactly, logprobs to ``LOGPROB_TOL``.

Why a server run rather than vLLM's ``AsyncLLM`` in the test process: the server is the reference
the issue names (its ``n`` seeds, ``echo`` prompt text and prompt-logprob layout are its
serving layer's, not the engine's), and it costs one engine start either way (~30 s here).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from tests.openai_sdk.shapes import HI, MODEL, PROMPTS
from tests.support.procs import ManagedProcess, free_port

# The engine settings both servers get as explicit flags, so neither side's defaults decide.
ENGINE_FLAGS = [
    "--served-model-name", MODEL, "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
    "--max-num-seqs", "16", "--seed", "0",
]  # fmt: skip
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}
LOGPROB_TOL = 1e-3
SEEDED = {"temperature": 0.8, "seed": 1234}

# name -> (endpoint, body). Greedy unless seeded: vLLM refuses n > 1 with temperature 0, and gives
# choice i of a seeded request the seed + i.
REFERENCE_REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat logprobs": (
        "chat",
        {"messages": HI, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 3},
    ),
    "chat n=2 seeded": ("chat", {"messages": HI, "max_tokens": 8, "n": 2, **SEEDED}),
    "chat n=2 seeded stream": ("chat", {"messages": HI, "max_tokens": 8, "n": 2, "stream": True, **SEEDED}),
    "completion logprobs": (
        "completions",
        {"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0, "logprobs": 3},
    ),
    "completion n=2 seeded": ("completions", {"prompt": PROMPTS[0], "max_tokens": 8, "n": 2, **SEEDED}),
    "completion prompts": ("completions", {"prompt": PROMPTS, "max_tokens": 6, "temperature": 0}),
    "completion prompts x n=2 seeded": (
        "completions",
        {"prompt": PROMPTS, "max_tokens": 6, "n": 2, **SEEDED},
    ),
    "completion echo logprobs": (
        "completions",
        {"prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0, "echo": True, "logprobs": 2},
    ),
    "completion echo logprobs max_tokens 0": (
        "completions",
        {"prompt": PROMPTS[1], "max_tokens": 0, "temperature": 0, "echo": True, "logprobs": 1},
    ),
    "completion echo stream": (
        "completions",
        {"prompt": PROMPTS[1], "max_tokens": 6, "temperature": 0, "echo": True, "stream": True},
    ),
}
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


def comparable(endpoint: str, body: Any) -> list[dict[str, Any]]:
    """Per choice (by index): text, tokens, logprobs and top alternatives' tokens -- from a body or
    a list of streamed chunks (dicts or SDK objects)."""
    chunks = body if isinstance(body, list) else [body]
    out: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        data = chunk.model_dump() if hasattr(chunk, "model_dump") else chunk
        for c in data.get("choices") or []:
            ch = out.setdefault(
                c["index"], {"index": c["index"], "text": "", "tokens": [], "logprobs": [], "top": []}
            )
            if endpoint == "chat":
                part = c.get("message") or c.get("delta") or {}
                ch["text"] += part.get("content") or ""
                for e in (c.get("logprobs") or {}).get("content") or []:
                    ch["tokens"].append(e["token"])
                    ch["logprobs"].append(e["logprob"])
                    ch["top"].append(sorted(t["token"] for t in e.get("top_logprobs") or []))
            else:
                ch["text"] += c.get("text") or ""
                lp = c.get("logprobs") or {}
                ch["tokens"] += lp.get("tokens") or []
                ch["logprobs"] += lp.get("token_logprobs") or []
                ch["top"] += [sorted(t) if t else None for t in lp.get("top_logprobs") or []]
    return [out[i] for i in sorted(out)]


def assert_same(ours: list[dict[str, Any]], ref: list[dict[str, Any]]) -> None:
    """Same choices, texts, tokens and alternatives; logprobs within ``LOGPROB_TOL``."""
    assert [c["index"] for c in ours] == [c["index"] for c in ref]
    for a, b in zip(ours, ref, strict=True):
        assert a["text"] == b["text"], (a["index"], a["text"], b["text"])
        assert a["tokens"] == b["tokens"], a["index"]
        assert a["top"] == b["top"], a["index"]
        assert len(a["logprobs"]) == len(b["logprobs"])
        for x, y in zip(a["logprobs"], b["logprobs"], strict=True):
            assert (x is None) == (y is None) and (x is None or abs(x - y) <= LOGPROB_TOL), (x, y)


class VllmServer:
    """``python -m vllm.entrypoints.openai.api_server`` on a free port: launched by the constructor,
    ``wait_ready()`` waits until it serves (or raises with its log tail), ``stop()`` ends it."""

    def __init__(
        self, name: str, model_dir: Path, log_dir: Path, *extra: str, env: dict[str, str] | None = None
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = ["-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--model", str(model_dir), *ENGINE_FLAGS, "--disable-uvicorn-access-log", *extra]
        self.proc = ManagedProcess.python(name, argv, log_dir, {**ENGINE_ENV, **(env or {})})

    def wait_ready(self, timeout: float = 300) -> VllmServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                self.stop()
                raise RuntimeError(f"{self.proc.name} exited:\n{self.proc.tail()}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(
            f"{self.proc.name} did not serve {MODEL} within {timeout:.0f} s:\n{self.proc.tail()}"
        )

    def stop(self) -> None:
        self.proc.stop(grace=30)


def run_reference(url: str) -> dict[str, Any]:
    """Each request of ``REFERENCE_REQUESTS``, sent one at a time; the answer body or the chunks."""
    out: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=120) as http:
        for name, (endpoint, body) in REFERENCE_REQUESTS.items():
            payload = {"model": MODEL, **body}
            if not body.get("stream"):
                resp = http.post(PATHS[endpoint], json=payload)
                resp.raise_for_status()
                out[name] = resp.json()
                continue
            chunks = []
            with http.stream("POST", PATHS[endpoint], json=payload) as resp:
                resp.raise_for_status()
                for line in resp.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        chunks.append(json.loads(line[6:]))
            out[name] = chunks
    return out
