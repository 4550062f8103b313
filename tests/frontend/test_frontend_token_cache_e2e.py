"""End to end: a frontend serving chats that share a long system prompt encodes it once, answers
each with the prompt length a full encode gives, and reports the cache under the reference's
metric names."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from tokenizers import Tokenizer

from tests.support.graph import Frontend, discovery_env, metric_value, start_mocker

pytestmark = [pytest.mark.timeout(120)]
MODEL = "smol-cache"


def test_shared_system_prompt_is_taken_from_the_cache(log_dir: Path, smollm2_tokenizer_dir: Path) -> None:
    env = discovery_env("file")
    env["DYN_NAMESPACE"] = "token-cache"
    started = int(time.time())
    worker = start_mocker(log_dir, env, smollm2_tokenizer_dir, "mocker-cache", "--model-name", MODEL)
    frontend = Frontend(log_dir, env, name="frontend-cache")
    try:
        frontend.wait_for_instances(1)
        system = "You answer questions about European capitals, briefly and precisely. " * 60
        tokenizer = Tokenizer.from_file(str(smollm2_tokenizer_dir / "tokenizer.json"))
        with httpx.Client(timeout=60) as http:
            for i in range(4):
                messages = [
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"Capital #{i}?"},
                ]
                r = http.post(
                    f"{frontend.url}/v1/chat/completions",
                    json={"model": MODEL, "messages": messages, "max_tokens": 2},
                )
                assert r.status_code == 200, r.text
                prompt = (
                    f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nCapital #{i}?<|im_end|>\n"
                    "<|im_start|>assistant\n"
                )
                assert r.json()["usage"]["prompt_tokens"] == len(tokenizer.encode(prompt).ids)
            text = http.get(f"{frontend.url}/metrics").text
            [model] = http.get(f"{frontend.url}/v1/models").json()["data"]
        # /v1/models: when this frontend started serving the model, and who serves it.
        assert started <= model["created"] <= time.time() and model["owned_by"] == "dynamo"
        assert metric_value(text, "dynamo_frontend_tokenizer_cache_hits_total", model=MODEL) == 3
        assert metric_value(text, "dynamo_frontend_tokenizer_cache_misses_total", model=MODEL) == 1
        system_tokens = len(tokenizer.encode(f"system\n{system}").ids)
        assert (
            metric_value(text, "dynamo_frontend_tokenizer_cache_cached_tokens_total", model=MODEL)
            == 3 * system_tokens
        )
        assert metric_value(text, "dynamo_frontend_tokenizer_cache_bytes", model=MODEL) > 4 * system_tokens
        # The event-loop lag monitor runs (dynamo.frontend.loop_lag).
        assert metric_value(text, "dynamo_frontend_event_loop_lag_seconds_count") > 0
    finally:
        frontend.stop()
        worker.stop()
