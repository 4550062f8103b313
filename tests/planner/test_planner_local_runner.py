"""The planner in a real graph: ``python3 -m dynamo.deploy run`` with a frontend, mocker workers and
``python3 -m dynamo.planner`` (``optimization_target: load``, one decision a second), all real
processes on file discovery. Under a load step the planner scales the workers up, and back down
while a client keeps sending; no request fails across the scale events. A scale-up whose new worker
never becomes ready does not stall it: it asks for another one, and drains the stuck one when the
load falls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.graph import metric_value
from tests.support.procs import ManagedProcess, free_port, wait_until

pytestmark = pytest.mark.timeout(150)
MODEL = "mock-planner"
INTERVAL = 1  # seconds between decisions


LOAD_TARGET = {
    "optimization_target": "load",
    "decode_scale_up_kv_rate": 60,
    "decode_scale_down_kv_rate": 25,
    "load_adjustment_interval_seconds": INTERVAL,
}


def planner_graph(
    path: Path, name: str, model_dir: Path, *, stuck_replica: int | None = None, target: dict | None = None
) -> Path:
    """An aggregated mocker graph with a planner; replica ``stuck_replica`` of the worker never
    becomes ready (its process sleeps instead of serving)."""
    config = json.dumps(
        {
            "environment": "kubernetes",
            "backend": "mocker",
            "mode": "agg",
            "min_endpoint": 1,
            "max_gpu_budget": 3,
            "scale_up_timeout_seconds": 4,
            **(target or LOAD_TARGET),
        }
    )
    mocker = (
        f"exec python3 -m dynamo.mocker --model-path {model_dir} --model-name {MODEL} "
        "--num-gpu-blocks-override 64 --block-size 16 --max-num-seqs 8 --speedup-ratio 4"
    )
    if stuck_replica is not None:
        mocker = (
            f'if [ "$POD_NAME" = "{name}-mockerworker-{stuck_replica}" ]; then exec sleep 600; fi; {mocker}'
        )
    ns = {"dynamoNamespace": name}
    doc = {
        "apiVersion": "nvidia.com/v1alpha1",
        "kind": "DynamoGraphDeployment",
        "metadata": {"name": name},
        "spec": {
            "envs": [{"name": "DYN_LOG", "value": "info"}, {"name": "DYN_DISCOVERY_TTL", "value": "2"}],
            "services": {
                "Frontend": {
                    **ns,
                    "componentType": "frontend",
                    "extraPodSpec": {"mainContainer": {"command": ["python3", "-m", "dynamo.frontend"]}},
                },
                "Planner": {
                    **ns,
                    "componentType": "planner",
                    "extraPodSpec": {
                        "mainContainer": {
                            "command": ["python3", "-m", "dynamo.planner"],
                            "args": ["--config", config],
                        }
                    },
                },
                "MockerWorker": {
                    **ns,
                    "componentType": "worker",
                    "replicas": 1,
                    "readinessProbe": {
                        "httpGet": {"path": "/health", "port": "system"},
                        "periodSeconds": 0.5,
                    },
                    "extraPodSpec": {"mainContainer": {"command": ["/bin/sh", "-c"], "args": [mocker]}},
                },
            },
        },
    }
    path.write_text(yaml.safe_dump(doc))
    return path


class Graph:
    """The runner process and what it printed."""

    def __init__(self, tmp_path: Path, log_dir: Path, graph: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runner = ManagedProcess.python(
            f"runner-{name}",
            [
                "-m",
                "dynamo.deploy",
                "run",
                str(graph),
                "--port",
                str(self.port),
                "--run-dir",
                str(tmp_path / "run"),
                "--grace",
                "5",
            ],
            log_dir,
            {"ETCD_ENDPOINTS": "", "DYN_FILE_DISCOVERY_DIR": ""},
        )
        self.run_dir = tmp_path / "run"

    def text(self) -> str:
        return self.runner.log_text()

    def wait_for(self, pattern: str, timeout: float) -> float:
        """Seconds until the runner printed a line matching ``pattern``."""
        start = time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text(), re.MULTILINE):
                return time.monotonic() - start
            if not self.runner.alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"runner did not print /{pattern}/ within {timeout}s:\n{self.report()}")

    def report(self) -> str:
        planner_log = self.run_dir / "planner-0" / "output.log"
        tail = "\n".join(planner_log.read_text().splitlines()[-15:]) if planner_log.exists() else ""
        return f"--- runner ---\n{self.runner.tail(60)}\n--- planner ---\n{tail}"

    def planner_metrics(self) -> str:
        m = re.search(r"^Planner\s+0\s+\d+\s+(\d+)\s", self.text(), re.MULTILINE)
        assert m, self.report()
        with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self) -> int | None:
        code = self.runner.stop(grace=30)
        # Whatever the runner left (it should leave nothing): the replicas it printed.
        for pid in {
            int(p)
            for p in re.findall(r"\(pid (\d+)\)|^\w+\s+\d+\s+(\d+)\s", self.text(), re.MULTILINE)
            for p in p
            if p
        }:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        return code


class Load:
    """``clients`` concurrent completion loops against the frontend, counting outcomes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: Counter[str] = Counter()
        self.errors: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def _client(self) -> None:
        body = {"model": MODEL, "prompt": "Hello there " * 10, "max_tokens": 150}
        async with httpx.AsyncClient(timeout=60) as c:
            while True:
                try:
                    r = await c.post(f"{self.url}/v1/completions", json=body)
                    self.outcomes[str(r.status_code)] += 1
                    if r.status_code != 200:
                        self.errors.append(r.text[:300])
                except httpx.HTTPError as exc:
                    self.outcomes[type(exc).__name__] += 1
                    self.errors.append(repr(exc))

    def set_clients(self, n: int) -> None:
        while len(self._tasks) < n:
            self._tasks.append(asyncio.create_task(self._client()))
        while len(self._tasks) > n:
            self._tasks.pop().cancel()

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until(graph: Graph, pattern: str, timeout: float) -> float:
    return await asyncio.to_thread(graph.wait_for, pattern, timeout)


def start(
    tmp_path: Path,
    log_dir: Path,
    model_dir: Path,
    name: str,
    stuck: int | None = None,
    target: dict | None = None,
) -> Graph:
    path = planner_graph(tmp_path / "graph.yaml", name, model_dir, stuck_replica=stuck, target=target)
    graph = Graph(tmp_path, log_dir, path, name)
    graph.wait_for(r"graph \S+ is ready", 60)
    return graph


async def test_planner_scales_up_under_load_and_back_down_without_failed_requests(
    tmp_path: Path, log_dir: Path, smollm2_tokenizer_dir: Path
) -> None:
    graph = start(tmp_path, log_dir, smollm2_tokenizer_dir, "planner-e2e")
    load = Load(graph.url)
    try:
        load.set_clients(12)  # a load step: 12 streams of ~12 KV blocks on a 64-block worker
        up = await until(graph, r"scaling MockerWorker: 1 -> 2", 15)
        assert up <= 10 * INTERVAL, f"first scale-up after {up:.1f}s"
        await until(graph, r"MockerWorker\[1\]: starting -> ready", 30)
        await until(graph, r"scaling MockerWorker: 2 -> 3", 20)  # still loaded: up to the budget (3)
        await until(graph, r"MockerWorker\[2\]: starting -> ready", 30)
        await asyncio.sleep(2)
        load.set_clients(1)  # the step ends; one client keeps sending through the scale-down
        down = await until(graph, r"scaling MockerWorker: 2 -> 1", 30)
        assert down <= 20 * INTERVAL, f"back to 1 worker only after {down:.1f}s"
        await until(
            graph,
            r"MockerWorker\[\d\]: drained \(exit 0\)\n(.|\n)*MockerWorker\[\d\]: drained \(exit 0\)",
            45,
        )
        await asyncio.sleep(2)
        served_during = sum(load.outcomes.values())
        await load.stop()
        assert served_during > 20
        assert set(load.outcomes) == {"200"}, (load.outcomes, load.errors[:3], graph.report())
        assert graph.runner.alive(), graph.report()  # a drained replica is not a crash
        metrics = graph.planner_metrics()
        assert metric_value(metrics, "dynamo_planner_decisions_total", pool="decode", change="up") >= 2
        assert metric_value(metrics, "dynamo_planner_decisions_total", pool="decode", change="down") >= 2
        assert metric_value(metrics, "dynamo_planner_target_replicas", pool="decode") == 1
        decisions = (graph.run_dir / "planner-0" / "output.log").read_text()
        assert re.search(
            r"planner decision \d+: decode 1 -> 2 \(ready 1\); decode up: KV use \d+% >= 60%", decisions
        )
        assert "observed_ttft_ms=" in decisions  # the frontend's traffic is among the inputs
    finally:
        await load.stop()
        code = graph.stop()
    assert code == 0, graph.report()


async def test_a_scale_up_that_never_becomes_ready_does_not_stall_the_planner(
    tmp_path: Path, log_dir: Path, smollm2_tokenizer_dir: Path
) -> None:
    graph = start(tmp_path, log_dir, smollm2_tokenizer_dir, "planner-stuck", stuck=1)
    load = Load(graph.url)
    try:
        load.set_clients(12)
        await until(graph, r"scaling MockerWorker: 1 -> 2", 15)  # replica 1: sleeps, never ready
        # The planner keeps deciding: 4 s (scale_up_timeout_seconds) after its last ask the missing
        # replica counts as stuck; loaded, it asks for one more on top, or, at a calm moment, drops
        # the stuck one and asks again later. Either way capacity arrives from a new replica.
        await until(graph, r"MockerWorker\[[2-9]\]: starting -> ready", 40)
        assert "MockerWorker[1]: starting -> ready" not in graph.text()
        await load.stop()
        # Load gone: the stuck replica is drained (if it was not already), then down to the minimum.
        await until(graph, r"MockerWorker\[1\]: drained", 30)
        await until(graph, r"scaling MockerWorker: \d -> 1", 30)
        assert set(load.outcomes) == {"200"}, (load.outcomes, load.errors[:3], graph.report())
        assert graph.runner.alive(), graph.report()  # neither the stuck replica nor its drain is a crash
        await asyncio.to_thread(
            wait_until,
            lambda: (
                metric_value(graph.planner_metrics(), "dynamo_planner_target_replicas", pool="decode") == 1
            ),
            10,
            "the planner's target back at 1",
        )
    finally:
        await load.stop()
        code = graph.stop()
    assert code == 0, graph.report()


# A profile written by hand for the mocker as configured above (speedup 4), not measured: what the
# test checks is the SLA path through real processes (frontend traffic scraped -> forecast ->
# profile arithmetic -> decision -> runner), not the numbers' accuracy.
HAND_WRITTEN_MOCKER_PROFILE = {
    "format": "dynamo-planner-profile/1",
    "backend": "mocker",
    "prefill": {"engine_num_gpu": 1, "points": [{"isl": 32, "ttft_ms": 8}, {"isl": 1024, "ttft_ms": 60}]},
    "decode": {
        "engine_num_gpu": 1,
        "points": [
            {"context": 200, "concurrency": 1, "itl_ms": 5},
            {"context": 200, "concurrency": 8, "itl_ms": 6},
            {"context": 200, "concurrency": 16, "itl_ms": 9},
        ],
    },
}


async def test_sla_target_scales_with_a_hand_written_profile(
    tmp_path: Path, log_dir: Path, smollm2_tokenizer_dir: Path
) -> None:
    profile = tmp_path / "profiling_results" / "planner_profile.json"
    profile.parent.mkdir()
    profile.write_text(json.dumps(HAND_WRITTEN_MOCKER_PROFILE))
    target = {
        "optimization_target": "sla",
        "ttft_ms": 200,
        "itl_ms": 10,
        "throughput_adjustment_interval_seconds": 2,
        "load_predictor": "constant",
        "profile_results_dir": str(profile.parent),
    }
    graph = start(tmp_path, log_dir, smollm2_tokenizer_dir, "planner-sla", target=target)
    load = Load(graph.url)
    try:
        load.set_clients(12)
        await until(graph, r"scaling MockerWorker: 1 -> [23]", 20)
        load.set_clients(0)
        await load.stop()
        await until(graph, r"scaling MockerWorker: \d -> 1", 20)
        assert set(load.outcomes) == {"200"}, (load.outcomes, load.errors[:3], graph.report())
        planner_log = graph.run_dir / "planner-0" / "output.log"
        wait_until(lambda: "no requests predicted" in planner_log.read_text(), 20, "an idle decision")
        decisions = planner_log.read_text()
        assert re.search(r"decode 1 -> [23] \(ready 1\); decode set: [1-3]\.\d+ engines needed", decisions), (
            graph.report()
        )
        await asyncio.to_thread(
            wait_until,
            lambda: (
                metric_value(graph.planner_metrics(), "dynamo_planner_input", signal="predicted_requests")
                == 0
            ),
            20,
            "a forecast of no requests",
        )
    finally:
        await load.stop()
        code = graph.stop()
    assert code == 0, graph.report()
