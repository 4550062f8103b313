"""``python3 -m dynamo.deploy run dgdr.yaml`` on one machine, as the operator does on a cluster:
the request's engine (the mocker) is profiled for real, the generated graph runs with its planner
(which reads the profile), and that graph meets the request's SLA at the request's load, measured
by a client: the example request itself, real processes, real HTTP, zero failed requests."""

from __future__ import annotations

import asyncio
import json
import random
import re
import statistics
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from dynamo.planner.profile import load_profile
from tests.support.procs import ROOT, ManagedProcess, free_port

pytestmark = pytest.mark.timeout(150)
EXAMPLE = ROOT / "deploy" / "examples" / "planner" / "dgdr" / "mocker.yaml"
LOAD_SECONDS = 8.0


async def one_request(
    session: aiohttp.ClientSession, url: str, model: str, isl: int, osl: int, seed: int
) -> tuple[float, float]:
    """(TTFT ms, mean ITL ms) of one streamed completion."""
    rng = random.Random(seed)
    body = {
        "model": model,
        "prompt": [rng.randrange(1000, 32000) for _ in range(isl)],
        "max_tokens": osl,
        "ignore_eos": True,
        "stream": True,
    }
    start = time.perf_counter()
    stamps: list[float] = []
    async with session.post(url + "/v1/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data:") and line != "data: [DONE]":
                chunk = json.loads(line[5:])
                assert "error" not in chunk, chunk
                if any(c.get("text") for c in chunk.get("choices") or []):
                    stamps.append(time.perf_counter())
    assert len(stamps) >= 2
    return (stamps[0] - start) * 1000, (stamps[-1] - stamps[0]) * 1000 / (len(stamps) - 1)


async def open_loop(
    url: str, model: str, rate: float, isl: int, osl: int
) -> list[tuple[float, float] | BaseException]:
    """Requests at ``rate`` per second (evenly spaced) for ``LOAD_SECONDS``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        tasks = []
        for i in range(int(rate * LOAD_SECONDS)):
            tasks.append(asyncio.create_task(one_request(session, url, model, isl, osl, i)))
            await asyncio.sleep(1 / rate)
        return await asyncio.gather(*tasks, return_exceptions=True)


async def test_local_dgdr_profiles_runs_its_graph_and_meets_its_sla(tmp_path: Path) -> None:
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    port, run_dir = free_port(), tmp_path / "run"
    runner = ManagedProcess.python(
        "deploy-run-dgdr",
        [
            "-m",
            "dynamo.deploy",
            "run",
            str(EXAMPLE),
            "--port",
            str(port),
            "--run-dir",
            str(run_dir),
            "--grace",
            "5",
        ],
        tmp_path,
        {"ETCD_ENDPOINTS": "", "NATS_SERVER": "", "DYN_FILE_DISCOVERY_DIR": ""},
    )
    try:
        await asyncio.to_thread(runner.wait_for_log, "is ready; frontend", 90)
        text = runner.log_text()
        assert re.search(r"^selected: (agg|disagg), \d+ engine", text, re.M), text
        # The profile was measured on the mocker and is what the graph's planner reads.
        profile = load_profile(run_dir / "profile" / "planner_profile.json")
        assert profile.backend == "mocker"
        generated = yaml.safe_load((run_dir / "profile" / "dgd.yaml").read_text())
        planner_args = generated["spec"]["services"]["Planner"]["extraPodSpec"]["mainContainer"]["args"]
        assert json.loads(planner_args[1])["profile_results_dir"] == str(run_dir.resolve() / "profile")

        workload, sla = spec["workload"], spec["sla"]
        results = await open_loop(
            f"http://127.0.0.1:{port}",
            spec["model"],
            workload["requestRate"],
            workload["isl"],
            workload["osl"],
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        assert not failed, failed[:3]
        done = [r for r in results if not isinstance(r, BaseException)]
        within = [ttft <= sla["ttft"] and itl <= sla["itl"] for ttft, itl in done]
        summary = (
            f"{sum(within)}/{len(done)} within TTFT {sla['ttft']} ms / ITL {sla['itl']} ms; "
            f"median TTFT {statistics.median(t for t, _ in done):.1f} ms, ITL {statistics.median(i for _, i in done):.2f} ms"
        )
        assert sum(within) >= 0.9 * len(done), f"{summary}\n{runner.tail(40)}"
        # The planner steers the graph with that profile (its first decision comes one interval in).
        planner_log = run_dir / "planner-0" / "output.log"
        deadline = time.monotonic() + 15
        while "planner decision 1:" not in planner_log.read_text() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert "planner decision 1:" in planner_log.read_text(), planner_log.read_text()[-2000:]
    finally:
        code = runner.stop(grace=30)
    assert code == 0, runner.tail(60)
