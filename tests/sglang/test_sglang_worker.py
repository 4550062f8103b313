"""The real ``dynamo.sglang`` worker (``SglangEngine`` served by ``dynamo.worker.serve``, as
``run_worker`` does), in-process, with ``FakeSglangEngine`` injected through its ``bindings`` test
hook (the real SGLang needs a GPU):

- end to end: registered through a real runtime with file discovery, a real frontend process
  answers an OpenAI chat request through it;
- disaggregated: a prefill worker and a decode worker on in-memory discovery, the decode worker
  finding the prefill worker itself (SGLang cannot prefill on a decode worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from tokenizers import Tokenizer

from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.protocols import PreprocessedRequest, StopConditions
from dynamo.runtime import DistributedRuntime, EndpointId, RuntimeConfig
from dynamo.runtime.discovery.mem import MemDiscovery, MemStore
from dynamo.sglang.args import parse_args
from dynamo.sglang.engine import SglangEngine
from dynamo.worker import serve
from tests.sglang.fake_sglang import Behaviour, FakeBootstrapServer, FakeSglangEngine, fake_bindings
from tests.support.graph import Frontend

pytestmark = pytest.mark.timeout(120)
MODEL = "smol-sglang"
ANSWER = "Paris is the capital of France."


@contextlib.asynccontextmanager
async def worker(
    args: str, runtime: DistributedRuntime, behaviour: Behaviour
) -> AsyncIterator[asyncio.Task[int]]:
    """The worker as a task in ``runtime``'s namespace; shut down through it at the end."""
    config = parse_args([*shlex.split(args), "--namespace", runtime.namespace])
    bindings = fake_bindings(behaviour)
    task = asyncio.create_task(
        serve(lambda ctx: SglangEngine(config, ctx, bindings=bindings), config, runtime=runtime)
    )
    try:
        yield task
    finally:
        runtime.request_shutdown()
        code = await asyncio.wait_for(task, 30)
        assert code == 0
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # serve() installed the worker's handlers on this loop
            loop.remove_signal_handler(sig)


async def test_worker_with_fake_engine_answers_a_chat_request_through_a_real_frontend(
    tmp_path: Path, log_dir: Path, smollm2_tokenizer_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="dynamo.worker.serve")
    namespace = "sglang-e2e"
    discovery = tmp_path / "discovery"
    card = ModelDeploymentCard.from_local_path(smollm2_tokenizer_dir)
    tokenizer = Tokenizer.from_file(str(smollm2_tokenizer_dir / "tokenizer.json"))
    reply = tokenizer.encode(ANSWER, add_special_tokens=False).ids
    behaviour = Behaviour(reply=reply, eos=card.eos_token_ids[0], chunk=3)
    runtime = await DistributedRuntime.create(
        RuntimeConfig.from_env(
            namespace=namespace, discovery_backend="file", file_discovery_dir=discovery, discovery_ttl=2.0
        )
    )
    env = {
        "DYN_DISCOVERY_BACKEND": "file",
        "DYN_FILE_DISCOVERY_DIR": str(discovery),
        "DYN_DISCOVERY_TTL": "2",
        "DYN_NAMESPACE": namespace,
    }
    args = f"--model-path {smollm2_tokenizer_dir} --served-model-name {MODEL} --tp 1 --trust-remote-code"
    frontend: Frontend | None = None
    async with worker(args, runtime, behaviour):
        try:
            frontend = await asyncio.to_thread(Frontend, log_dir, env, name="frontend-sglang")
            await asyncio.to_thread(frontend.wait_for_instances, 1)
            client = openai.AsyncOpenAI(base_url=f"{frontend.url}/v1", api_key="none", max_retries=0)
            resp = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=32,
                temperature=0,
            )
            await client.close()
        finally:
            if frontend is not None:
                await asyncio.to_thread(frontend.stop)
    assert resp.choices[0].message.content is not None
    assert resp.choices[0].message.content.strip() == ANSWER
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens >= len(reply)
    (fake,) = [f for f in FakeSglangEngine.instances if f.behaviour is behaviour]
    (call,) = fake.calls
    params = call["sampling_params"]
    assert params["max_new_tokens"] == 32 and params["temperature"] == 0
    assert card.eos_token_ids[0] in params["stop_token_ids"]
    assert len(call["input_ids"]) == resp.usage.prompt_tokens
    assert fake.shut_down
    assert re.search(r"SglangWorker [0-9a-f]+ initialized: serving model 'smol-sglang'", caplog.text)


# ----- disaggregated, in memory ------------------------------------------------------------------------


async def mem_runtime(store: MemStore, namespace: str) -> DistributedRuntime:
    config = RuntimeConfig(namespace=namespace, discovery_backend="mem", tcp_host="127.0.0.1")
    return await DistributedRuntime.create(config, discovery=MemDiscovery(store=store))


async def ask(runtime: DistributedRuntime, namespace: str, req: PreprocessedRequest) -> list[dict]:
    client = await runtime.endpoint_client(EndpointId(namespace, "backend", "generate"))
    await client.wait_for_instances(10)
    stream = await client.round_robin(req)
    items = [item async for item in stream]
    await client.close()
    return items


async def test_decode_worker_finds_a_prefill_worker_for_a_request_that_has_none(smollm2_tokenizer_dir: Path):
    store, ns = MemStore(), "sglang-disagg"
    server = FakeBootstrapServer()
    base = (
        f"--model-path {smollm2_tokenizer_dir} --served-model-name m --disaggregation-transfer-backend nixl"
    )
    rt_prefill, rt_decode, rt_client = [await mem_runtime(store, ns) for _ in range(3)]
    prefills = await rt_client.endpoint_client(EndpointId(ns, "prefill", "generate"))
    req = PreprocessedRequest(
        request_id="d-1",
        model="m",
        token_ids=list(range(50, 70)),
        eos_token_ids=[2],
        stop=StopConditions(max_tokens=8),
    )
    async with worker(base + " --disaggregation-mode prefill", rt_prefill, Behaviour(bootstrap=server)):
        await prefills.wait_for_instances(10)
        decode = Behaviour(bootstrap=server, reply=[41, 42, 43])
        async with worker(base + " --disaggregation-mode decode", rt_decode, decode):
            items = await ask(rt_client, ns, req)
    await prefills.close()
    await rt_client.shutdown()
    tokens = [t for item in items for t in item.get("token_ids", [])]
    assert tokens == [41, 42, 43, 2] and items[-1]["finish_reason"] == "stop"
    assert not any(item.get("disagg_fallback") for item in items)
    assert len(server.joined) == 1  # the decode request joined the prefill's bootstrap room


async def test_decode_worker_without_prefill_workers_says_so(smollm2_tokenizer_dir: Path):
    store, ns = MemStore(), "sglang-lonely"
    rt_decode, rt_client = await mem_runtime(store, ns), await mem_runtime(store, ns)
    async with worker(
        f"--model-path {smollm2_tokenizer_dir} --disaggregation-mode decode", rt_decode, Behaviour()
    ):
        req = PreprocessedRequest(request_id="d-2", model="m", token_ids=[1, 2, 3], eos_token_ids=[2])
        items = await ask(rt_client, ns, req)
    await rt_client.shutdown()
    assert items[-1]["finish_reason"] == "error" and "no live prefill worker" in items[-1]["error"]


async def test_worker_whose_engine_fails_to_start_exits_1_with_one_line(
    smollm2_tokenizer_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.ERROR)
    runtime = await mem_runtime(MemStore(), "sglang-broken")
    config = parse_args(["--model-path", str(smollm2_tokenizer_dir), "--namespace", runtime.namespace])
    behaviour = Behaviour(fail_start=RuntimeError("CUDA out of memory"))
    bindings = fake_bindings(behaviour)
    assert await serve(lambda ctx: SglangEngine(config, ctx, bindings=bindings), config, runtime=runtime) == 1
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert (
        line.startswith("SGLang engine failed to start: SGLang engine for") and "CUDA out of memory" in line
    )
