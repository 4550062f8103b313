"""The real ``dynamo.trtllm`` worker (``TrtllmEngine`` served by ``dynamo.worker.serve``, as
``run_worker`` does), in-process, with the fake TensorRT-LLM classes injected through its
``bindings`` test hook (the real engine needs a GPU):

- end to end: registered through a real runtime with file discovery, a real frontend process
  answers an OpenAI chat request through it;
- disaggregated (decode_first): a decode worker calls a prefill worker over the request plane and
  continues from the ``DisaggregatedParams`` it returns.
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
from dynamo.llm.protocols import PreprocessedRequest, RemotePrefill, StopConditions
from dynamo.runtime import DistributedRuntime, EndpointId, RuntimeConfig
from dynamo.runtime.discovery.mem import MemDiscovery, MemStore
from dynamo.runtime.runtime import handler_name
from dynamo.trtllm.args import parse_args
from dynamo.trtllm.engine import TrtllmEngine
from dynamo.worker import serve
from tests.support.graph import Frontend
from tests.trtllm.fake_trtllm import Behaviour, FakeTrtllmLLM, fake_bindings

pytestmark = pytest.mark.timeout(120)
MODEL = "smol-trtllm"
ANSWER = "Paris is the capital of France."


@contextlib.asynccontextmanager
async def worker(
    args: str, runtime: DistributedRuntime, behaviour: Behaviour
) -> AsyncIterator[asyncio.Task[int]]:
    """The worker as a task in ``runtime``'s namespace; shut down through it at the end."""
    config = parse_args([*shlex.split(args), "--namespace", runtime.namespace])
    bindings = fake_bindings(behaviour)
    task = asyncio.create_task(
        serve(lambda ctx: TrtllmEngine(config, ctx, bindings=bindings), config, runtime=runtime)
    )
    try:
        yield task
    finally:
        runtime.request_shutdown()
        assert await asyncio.wait_for(task, 30) == 0
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # serve() installed the worker's handlers on this loop
            loop.remove_signal_handler(sig)


async def test_worker_with_fake_engine_answers_a_chat_request_through_a_real_frontend(
    tmp_path: Path, log_dir: Path, smollm2_tokenizer_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="dynamo.worker.serve")
    namespace = "trtllm-e2e"
    discovery = tmp_path / "discovery"
    card = ModelDeploymentCard.from_local_path(smollm2_tokenizer_dir)
    reply = (
        Tokenizer.from_file(str(smollm2_tokenizer_dir / "tokenizer.json"))
        .encode(ANSWER, add_special_tokens=False)
        .ids
    )
    behaviour = Behaviour(reply=reply, chunk=3)
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
    configs = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "trtllm" / "engine_configs"
    args = f"--model-path {smollm2_tokenizer_dir} --served-model-name {MODEL} --extra-engine-args {configs / 'agg.yaml'}"
    frontend: Frontend | None = None
    async with worker(args, runtime, behaviour):
        try:
            frontend = await asyncio.to_thread(Frontend, log_dir, env, name="frontend-trtllm")
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
    (llm,) = [f for f in FakeTrtllmLLM.instances if f.behaviour is behaviour]
    (call,) = llm.calls
    assert (
        call.params.max_tokens == 32
        and call.params.temperature == 0
        and call.params.end_id == card.eos_token_ids[0]
    )
    assert len(call.prompt_token_ids) == resp.usage.prompt_tokens
    assert llm.llm_args["max_batch_size"] == 16 and llm.shut_down  # from the example's YAML
    assert re.search(r"TrtllmWorker [0-9a-f]+ initialized: serving model 'smol-trtllm'", caplog.text)


async def mem_runtime(store: MemStore, namespace: str) -> DistributedRuntime:
    config = RuntimeConfig(namespace=namespace, discovery_backend="mem", tcp_host="127.0.0.1")
    return await DistributedRuntime.create(config, discovery=MemDiscovery(store=store))


async def test_decode_first_decode_worker_continues_from_the_prefill_workers_params(
    smollm2_tokenizer_dir: Path,
):
    store, ns = MemStore(), "trtllm-disagg"
    rt_prefill, rt_decode, rt_client = [await mem_runtime(store, ns) for _ in range(3)]
    base = f"--model-path {smollm2_tokenizer_dir} --served-model-name m"
    prefill_b, decode_b = Behaviour(), Behaviour(reply=[51, 52, 53])
    async with (
        worker(base + " --disaggregation-mode prefill", rt_prefill, prefill_b),
        worker(base + " --disaggregation-mode decode", rt_decode, decode_b),
    ):
        prefills = await rt_client.endpoint_client(EndpointId(ns, "prefill", "generate"))
        decodes = await rt_client.endpoint_client(EndpointId(ns, "backend", "generate"))
        (prefill_id,) = await prefills.wait_for_instances(10)
        await decodes.wait_for_instances(10)
        target = RemotePrefill(
            address=prefills.instances[prefill_id].address,
            handler=handler_name(EndpointId(ns, "prefill", "generate")),
        )
        req = PreprocessedRequest(
            request_id="df-1",
            model="m",
            token_ids=list(range(50, 90)),
            eos_token_ids=[2],
            stop=StopConditions(max_tokens=8),
            remote_prefill=target,
        )
        stream = await decodes.round_robin(req)
        items = [item async for item in stream]
        await prefills.close()
        await decodes.close()
    await rt_client.shutdown()
    assert [t for item in items for t in item.get("token_ids", [])] == [51, 52, 53, 2]
    assert not any(item.get("disagg_fallback") for item in items)
    (pllm,) = [f for f in FakeTrtllmLLM.instances if f.behaviour is prefill_b]
    (dllm,) = [f for f in FakeTrtllmLLM.instances if f.behaviour is decode_b]
    assert pllm.calls[0].disagg.request_type == "context_only"
    assert dllm.calls[0].disagg.request_type == "generation_only"
    assert dllm.calls[0].disagg.opaque_state == prefill_b.opaque_state  # bytes survived the request plane
