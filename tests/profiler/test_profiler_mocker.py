"""``python3 -m dynamo.profiler`` on the mocker: real processes (the local runner starts a frontend
and a mocker worker per batch size), real HTTP. The measured tables must be what the mocker's
timing model produces (its prefill and decode step times plus the serving overhead, never less),
the profile must load in the planner, and the generated graph must parse and run the chosen batch
size. A target no configuration meets fails with the reason in words."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynamo.deploy.spec import load_graph_file
from dynamo.mocker.timing import decode_ms, prefill_ms
from dynamo.planner.profile import load_profile
from tests.support.procs import ROOT

pytestmark = pytest.mark.timeout(120)
OVERHEAD_MS = 150  # HTTP, tokenization, the request plane on a busy 2-core machine: generous


@pytest.fixture(scope="module")
def tokenizer_dir() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "dynamo.models", "prepare", "smollm2", "--tokenizer-only", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def profiler(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ETCD_ENDPOINTS": "", "NATS_SERVER": "", "DYN_FILE_DISCOVERY_DIR": ""}
    return subprocess.run(
        [sys.executable, "-m", "dynamo.profiler", *args, "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
        env=env,
    )


def test_mocker_profile_is_measured_and_sizes_a_graph(tmp_path: Path, tokenizer_dir: str) -> None:
    proc = profiler(
        tmp_path,
        *("--mocker", "--model", tokenizer_dir, "--isl", "256", "--osl", "32"),
        *("--ttft", "300", "--itl", "30", "--request-rate", "8", "--batches", "4,16"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    out = tmp_path / "out"
    profile = load_profile(out / "planner_profile.json")
    selected = json.loads((out / "selected_config.json").read_text())
    measured = {m["candidate"]["batch"]: m for m in selected["measurements"]}
    assert sorted(measured) == [4, 16]
    for batch, m in measured.items():
        assert [p["isl"] for p in m["prefill"]] == [128, 256, 384]
        for p in m["prefill"]:  # one prefill step of the whole prompt, then the first token
            assert prefill_ms(p["isl"]) <= p["ttft_ms"] <= prefill_ms(p["isl"]) + OVERHEAD_MS, p
        concurrencies = sorted({1, batch // 2, batch})
        assert [(p["context"], p["concurrency"]) for p in m["decode"]] == [(272, c) for c in concurrencies]
        for p in m["decode"]:  # a decode step per token; the KV cache (16384 blocks) is nearly empty
            assert decode_ms(0) * 0.9 <= p["itl_ms"] <= decode_ms(0.05) + 25, p
    assert profile.backend == "mocker" and profile.prefill is not None and profile.decode is not None
    sel = selected["selection"]
    assert sel["predicted_ttft_ms"] <= 300 and sel["predicted_itl_ms"] <= 30
    # The stated workload (8 req/s) was replayed on every candidate; the selected one held it.
    assert all(m["replays"] for m in measured.values())
    assert sel["replay"]["attainment"] >= 0.9 and sel["replay"]["requests"] > 0
    graph = load_graph_file(out / "dgd.yaml")
    workers = graph.workers()
    assert sum(w.replicas for w in workers) == sel["gpus"]
    assert f"--max-num-seqs {sel['decode']['batch']}" in workers[0].main.args[0]
    assert "selected: " in proc.stdout and selected["request_rate"] == 8


def test_mocker_profile_says_why_no_configuration_fits(tmp_path: Path, tokenizer_dir: str) -> None:
    proc = profiler(
        tmp_path,
        *("--mocker", "--model", tokenizer_dir, "--isl", "256", "--osl", "16"),
        *("--ttft", "5", "--itl", "30", "--request-rate", "1", "--batches", "4"),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    error = (tmp_path / "out" / "error.txt").read_text()
    assert "no measured configuration (batch 4) meets TTFT <= 5 ms" in error
    assert "a lone 256-token prompt already takes" in error
    assert not (tmp_path / "out" / "dgd.yaml").exists()
