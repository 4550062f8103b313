"""Disaggregated serving on the real model: frontend + one prefill and one decode ``dynamo.vllm``
worker on vLLM-CPU, the KV moving between them over NIXL, found through a real etcd.

The graph is the guides' pattern as written: the prefill worker gets ``--is-prefill-worker``, the
decode worker no role flag at all (plus this machine's core, length and cache settings). That worker
must still pull the prompt's KV over NIXL instead of recomputing it.

The two engines (~25 s, ~3.8 GiB each) start once for the module, each on its own core; the last
test kills the prefill worker. The decode worker runs without a prefix cache so that every
disaggregated request must pull its prompt's KV, and the aggregated reference -- the same request
pinned to the same decode engine (``nvext.backend_instance_id``: no disaggregation) -- must
compute it: the two outputs are compared token for token (greedy, float32).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynamo.llm.protocols import PreprocessedRequest, StopConditions
from dynamo.runtime import EndpointId
from dynamo.runtime.request_plane import RequestPlaneClient
from dynamo.runtime.runtime import handler_name
from tests.support.graph import Frontend, discovery_env, metric_value
from tests.support.procs import ManagedProcess, free_port, wait_until

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(420)]

MODEL = "SmolLM2-135M-Instruct"
# ~700 prompt tokens: five full 128-token KV blocks move over NIXL.
PROMPT = (
    "Here is a list of facts.\n"
    + "\n".join(
        f"Fact {i}: the box number {i} holds {i * 3 % 17} red balls and {i % 5} blue ones." for i in range(30)
    )
    + "\nQuestion: which box holds the most red balls? Answer:"
)
MAX_TOKENS = 24


@dataclass
class Graph:
    frontend: Frontend
    prefill: ManagedProcess
    decode: ManagedProcess
    decode_port: int
    prefill_port: int
    namespace: str
    etcd_endpoint: str

    @property
    def url(self) -> str:
        return f"{self.frontend.url}/v1"

    def decode_metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.decode_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def instances(self, component: str) -> list[dict[str, str]]:
        found = [i for i in self.frontend.health()["instances"] if f".{component}." in i["endpoint"]]
        assert found, self.frontend.health()
        return found


def _worker(name: str, model_dir: Path, mode: str, core: int, env: dict[str, str], port: int, log_dir: Path):
    args = ["-m", "dynamo.vllm", "--model", str(model_dir), "--cpu-core", str(core)]
    if mode == "prefill":
        args.append("--is-prefill-worker")  # the decode side has no role flag, as in the guides
    args += ["--max-model-len", "2048", "--max-num-seqs", "8"]
    if mode == "decode":
        args.append("--no-enable-prefix-caching")
    return ManagedProcess.python(name, args, log_dir, {**env, "DYN_SYSTEM_PORT": str(port)})


@pytest.fixture(scope="module")
def graph(log_dir: Path, smollm2_dir: Path, etcd) -> Iterator[Graph]:
    env = discovery_env("etcd", etcd.endpoint)
    env["DYN_NAMESPACE"] = "disagg-vllm"
    decode_port, prefill_port = free_port(), free_port()
    # The kill test wants a transfer stuck on a dead prefill worker to give up soon.
    decode = _worker(
        "vllm-decode",
        smollm2_dir,
        "decode",
        1,
        {**env, "DYN_KV_TRANSFER_TIMEOUT": "10"},
        decode_port,
        log_dir,
    )
    prefill = _worker("vllm-prefill", smollm2_dir, "prefill", 0, env, prefill_port, log_dir)
    frontend = None
    try:
        decode.wait_for_log("initialized", timeout=240)
        prefill.wait_for_log("initialized", timeout=240)
        frontend = Frontend(log_dir, env, name="frontend-disagg-vllm")
        frontend.wait_for_instances(2)
        yield Graph(frontend, prefill, decode, decode_port, prefill_port, "disagg-vllm", etcd.endpoint)
    finally:
        if frontend is not None:
            frontend.stop()
        decode.stop(grace=30)
        prefill.stop(grace=30)


def request_body(pin: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "logprobs": True,
    }
    if pin is not None:
        body["nvext"] = {"backend_instance_id": pin}
    return body


async def complete(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    r = await http.post(f"{url}/chat/completions", json=request_body())
    assert r.status_code == 200, r.text
    return r.json()


def tokens_of(resp: dict[str, Any]) -> list[str]:
    return [entry["token"] for entry in resp["choices"][0]["logprobs"]["content"]]


def logprobs_of(resp: dict[str, Any]) -> list[float]:
    return [entry["logprob"] for entry in resp["choices"][0]["logprobs"]["content"]]


def source_tokens(text: str, source: str) -> float:
    return metric_value(text, "vllm:prompt_tokens_by_source_total", source=source)


@pytest.fixture(scope="module")
def reference(graph: Graph) -> dict[str, Any]:
    """The aggregated answer: the same request pinned to the decode engine, prefilled there."""
    decode_id = graph.instances("backend")[0]["instance_id"]
    before = graph.decode_metrics()

    with httpx.Client(timeout=120) as http:
        r = http.post(f"{graph.url}/chat/completions", json=request_body(pin=decode_id))
    assert r.status_code == 200, r.text
    resp = r.json()
    prompt_tokens = resp["usage"]["prompt_tokens"]
    assert prompt_tokens > 5 * 128
    wait_until(
        lambda: (
            source_tokens(graph.decode_metrics(), "local_compute") - source_tokens(before, "local_compute")
            >= prompt_tokens
        ),
        10,
        "the decode engine to count the aggregated prefill",
    )
    return resp


def model_runner_cores(root_pid: int) -> set[int]:
    """Cores the compute (main) thread of vLLM's model-runner process under ``root_pid`` may use."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        for child in children.get(pid, []):
            if Path(f"/proc/{child}/comm").read_text().startswith("VLLM::Worker"):
                return os.sched_getaffinity(child)
            stack.append(child)
    raise AssertionError(f"no vLLM worker process under {root_pid}")


def test_each_engine_computes_on_its_own_core(graph: Graph):
    """vLLM's NIXL connector moves its thread to a 'reserved' core; ours puts it back."""
    assert model_runner_cores(graph.prefill.pid) == {0}
    assert model_runner_cores(graph.decode.pid) == {1}


async def test_disaggregated_output_equals_aggregated_and_the_kv_came_over_nixl(graph: Graph, reference):
    before = graph.decode_metrics()
    async with httpx.AsyncClient(timeout=120) as http:
        resp = await complete(http, graph.url)
    assert len(tokens_of(reference)) > 5
    assert tokens_of(resp) == tokens_of(reference)
    assert resp["choices"][0]["message"]["content"] == reference["choices"][0]["message"]["content"]
    assert logprobs_of(resp) == pytest.approx(logprobs_of(reference), abs=1e-3)

    prompt_tokens = resp["usage"]["prompt_tokens"]

    def transferred() -> float:
        return source_tokens(graph.decode_metrics(), "external_kv_transfer") - source_tokens(
            before, "external_kv_transfer"
        )

    wait_until(lambda: transferred() > 0, 10, "the decode engine to count transferred prompt tokens")
    recomputed = source_tokens(graph.decode_metrics(), "local_compute") - source_tokens(
        before, "local_compute"
    )
    # Every full 128-token block came over NIXL; only the tail of the last partial block was computed.
    assert transferred() >= (prompt_tokens - 1) // 128 * 128
    assert transferred() >= 0.9 * prompt_tokens, (transferred(), prompt_tokens)
    assert recomputed < 128, (recomputed, prompt_tokens)
    decode = graph.decode_metrics()
    assert metric_value(decode, "vllm:nixl_bytes_transferred_sum") > 0
    assert metric_value(decode, "dynamo_worker_disagg_transfers_total") >= 1
    front = graph.frontend.metrics()
    assert metric_value(front, "dynamo_frontend_disagg_requests_total", prefill="remote") >= 1
    assert metric_value(front, "dynamo_frontend_disagg_fallback_total") == 0


async def test_decode_first_gives_the_same_output(graph: Graph, log_dir: Path, reference):
    env = discovery_env("etcd", graph.etcd_endpoint)
    env.update({"DYN_NAMESPACE": graph.namespace, "DISAGGREGATION_STRATEGY": "decode_first"})
    frontend = Frontend(log_dir, env, name="frontend-disagg-vllm-decode-first")
    try:
        frontend.wait_for_instances(2)
        before = graph.decode_metrics()
        async with httpx.AsyncClient(timeout=120) as http:
            resp = await complete(http, f"{frontend.url}/v1")
        assert tokens_of(resp) == tokens_of(reference)
        assert (
            metric_value(frontend.metrics(), "dynamo_frontend_disagg_requests_total", prefill="remote") == 1
        )
        # The decode worker called the prefill worker and pulled the KV.
        assert (
            metric_value(graph.decode_metrics(), "dynamo_worker_disagg_transfers_total")
            == metric_value(before, "dynamo_worker_disagg_transfers_total") + 1
        )
    finally:
        frontend.stop()


async def test_unreachable_nixl_agent_falls_back_to_local_prefill(graph: Graph, reference):
    """A decode worker handed transfer parameters whose NIXL side channel is dead prefills locally."""
    client = RequestPlaneClient()
    prefill = graph.instances("prefill")[0]
    decode = graph.instances("backend")[0]
    token_ids = list(range(1000, 1700))
    request = PreprocessedRequest(
        request_id="dead-agent",
        model=MODEL,
        token_ids=token_ids,
        stop=StopConditions(max_tokens=4, ignore_eos=True),
        prefill_only=True,
    )
    try:
        # Real parameters from the real prefill worker, then pointed at an agent that is not there.
        stream = await client.stream(
            prefill["address"], handler_name(EndpointId.parse(prefill["endpoint"])), request
        )
        params = [item async for item in stream][-1]["kv_transfer_params"]
        assert params["remote_block_ids"] and params["do_remote_prefill"]
        params.update(remote_engine_id="no-such-engine", remote_port=free_port())
        decode_req = PreprocessedRequest(
            request_id="dead-agent-decode",
            model=MODEL,
            token_ids=token_ids,
            stop=StopConditions(max_tokens=4, ignore_eos=True),
            kv_transfer_params=params,
        )
        t0 = time.monotonic()
        stream = await client.stream(
            decode["address"], handler_name(EndpointId.parse(decode["endpoint"])), decode_req
        )
        outputs = [item async for item in stream]
        elapsed = time.monotonic() - t0
    finally:
        await client.close()
    assert outputs[0]["disagg_fallback"] in ("transfer_failed", "transfer_timeout")
    assert sum(len(o.get("token_ids", [])) for o in outputs) == 4
    assert outputs[-1]["finish_reason"] == "length"
    # Not waited out: the handshake fails in ~5 s (vLLM's 5 s receive timeout), within the decode
    # worker's DYN_KV_TRANSFER_TIMEOUT of 10 s, then the 700 tokens are prefilled locally: 5-17 s
    # on this 2-core VM (one 700-token request right after the failed handshake took 17 s).
    assert elapsed < 10 + 45
    metrics = graph.decode_metrics()
    assert metric_value(metrics, "dynamo_worker_disagg_fallback_total") == 1


async def test_killing_the_prefill_worker_mid_run_falls_back_and_succeeds(graph: Graph, reference):
    """Must run last: it kills the prefill worker."""
    fallbacks_before = metric_value(graph.frontend.metrics(), "dynamo_frontend_disagg_fallback_total")
    async with httpx.AsyncClient(timeout=120) as http:
        inflight = [asyncio.create_task(complete(http, graph.url)) for _ in range(3)]
        await asyncio.sleep(0.3)  # the prefills are running
        os.killpg(graph.prefill.pid, signal.SIGKILL)
        graph.prefill.proc.wait(10)
        t0 = time.monotonic()
        results = await asyncio.gather(*inflight)
        for resp in results:
            assert resp["choices"][0]["message"]["content"]
        # Later requests: first against the dead instance (still registered), then without it.
        for _ in range(3):
            resp = await complete(http, graph.url)
            assert tokens_of(resp) == tokens_of(reference)
        assert time.monotonic() - t0 < 120
    fallbacks = (
        metric_value(graph.frontend.metrics(), "dynamo_frontend_disagg_fallback_total") - fallbacks_before
    )
    assert fallbacks >= 1
