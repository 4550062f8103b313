"""A frontend that just started answers a request for a discovered model it is still loading
(tokenizer, chat template) with 503 + Retry-After, not 404: a client or a load balancer retries a
503, while a 404 says the model does not exist. Real etcd, a real mocker worker, a real frontend
process that starts after the worker registered (a restarted or newly scaled frontend)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support.graph import Frontend, discovery_env, start_mocker

MODEL = "loading-mock"


@pytest.mark.timeout(120)
def test_a_model_still_loading_is_503_with_retry_after_never_404(
    log_dir: Path, smollm2_tokenizer_dir: Path, etcd
) -> None:
    env = discovery_env("etcd", etcd.endpoint)
    worker = start_mocker(
        log_dir, env, smollm2_tokenizer_dir, "mocker", "--model-name", MODEL, "--speedup-ratio", "50"
    )
    frontend = None
    try:
        frontend = Frontend(log_dir, env)  # returns as soon as /live answers
        answers: list[tuple[int, str | None, str]] = []
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
        with httpx.Client(timeout=10) as http:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                r = http.post(f"{frontend.url}/v1/completions", json=body)
                answers.append((r.status_code, r.headers.get("retry-after"), r.text[:200]))
                if r.status_code == 200:
                    break
        assert answers[-1][0] == 200, answers[-3:]
        refusals = answers[:-1]
        assert all(status == 503 and retry for status, retry, _ in refusals), refusals
        # The bad answer this guards against: 404 "model not found" for a model that exists.
        assert not any(status == 404 for status, _, _ in answers)
        # A truly unknown model is still a 404.
        with httpx.Client(timeout=10) as http:
            r = http.post(f"{frontend.url}/v1/completions", json={**body, "model": "no-such-model"})
        assert r.status_code == 404, r.text
    finally:
        if frontend is not None:
            frontend.stop()
        worker.stop()
