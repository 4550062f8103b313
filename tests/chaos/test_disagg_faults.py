"""Disaggregated graph under faults (issue 13 §2): a prefill worker killed, or cut off, while it
prefills several requests (a stand-in for GPU engines: mocker prefill and decode workers).

Graph, each on its own simulated host: etcd, one decode worker, two frontends (one per
``--disaggregation-strategy``: ``prefill_first``, where the frontend calls the prefill worker, and
``decode_first``, where the decode worker does) and, per case, a fresh prefill worker whose
prefills are slowed so that the fault lands while ``IN_FLIGHT`` of them run. The mocker models the
KV transfer on the decode worker (it never reads the prefill worker's memory), so for the mocker
"mid-transfer" means mid-prefill.

Every request must still complete whole (the decode worker prefills it locally), within a bound:
at once after a kill (the connection drops), within the request plane's liveness timeout after a
cut (no FIN ever comes). Requests sent after the fault are served too, and after a cut link is
restored the prefill worker takes prefills again. Counts go to ``tally.record``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dynamo.runtime.request_plane.client import LIVENESS_TIMEOUT as WORKER_LIVENESS_S
from tests.chaos.hosts import SYSTEM_PORT, FrontendOnHost, Host, HostProcess, Lab
from tests.chaos.load import client, stream_completion
from tests.chaos.tally import Tally, record
from tests.support.graph import metric_value

pytestmark = [pytest.mark.timeout(180)]

MODEL = "chaos-disagg"
MAX_TOKENS = 12
IN_FLIGHT = 3
AFTER = 3
LIVENESS_S = 2.0  # the frontends' --request-plane-liveness-timeout (DYN_REQUEST_PLANE_LIVENESS_TIMEOUT)
# decode_first: the decode worker's own request-plane client notices the cut, with its default bound.
TTL_S = "3"
# ~600 prompt tokens each, above --max-local-prefill-length (256): disaggregated.
FACTS = " ".join(f"item{i} is {i * 7 % 13}." for i in range(120))


def prompt(tag: str) -> str:
    return f"{tag}: {FACTS} Which item is largest?"


@dataclass
class Graph:
    lab: Lab
    decode: HostProcess
    decode_host: Host
    frontends: dict[str, FrontendOnHost]

    def decode_metrics(self) -> str:
        return _get(f"http://{self.decode_host.ip}:{SYSTEM_PORT}/metrics")

    def frontend_metrics(self, strategy: str) -> str:
        return _get(f"{self.frontends[strategy].url}/metrics")


def _get(url: str) -> str:
    return httpx.get(url, timeout=5, trust_env=False).text


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (in a thread: it may do HTTP) without stopping the event loop."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def graph(log_dir: Path, smollm2_tokenizer_dir: Path) -> Iterator[Graph]:
    env = {
        "DYN_NAMESPACE": "disagg-faults",
        "DYN_DISCOVERY_TTL": TTL_S,
        "DYN_REQUEST_PLANE_LIVENESS_TIMEOUT": str(LIVENESS_S),
    }
    with Lab(log_dir, env) as lab:
        lab.etcd(lab.host("etcd"))
        decode_host = lab.host("decode")
        decode = lab.mocker(
            decode_host,
            smollm2_tokenizer_dir,
            "--model-name",
            MODEL,
            "--is-decode-worker",
            "--speedup-ratio",
            "10",
            name="decode",
        )
        frontends = {
            "prefill_first": lab.frontend(lab.host("fe-pf"), name="frontend-pf"),
            "decode_first": lab.frontend(
                lab.host("fe-df"), env={"DISAGGREGATION_STRATEGY": "decode_first"}, name="frontend-df"
            ),
        }
        yield Graph(lab, decode, decode_host, frontends)


def _start_prefill(graph: Graph, model_dir: Path, tag: str) -> tuple[Host, HostProcess, str]:
    host = graph.lab.host(f"p-{tag}")
    proc = graph.lab.mocker(
        host,
        model_dir,
        "--model-name",
        MODEL,
        "--is-prefill-worker",
        "--speedup-ratio",
        "0.02",  # IN_FLIGHT 600-token prefills take seconds: the fault lands mid-prefill
        name="prefill",
    )
    for fe in graph.frontends.values():
        fe.wait_for_instances(2)  # the decode worker and this prefill worker, no earlier one
    return host, proc, f"http://{host.ip}:{SYSTEM_PORT}/metrics"


@pytest.mark.parametrize("fault", ["kill9", "cut"])
@pytest.mark.parametrize("strategy", ["prefill_first", "decode_first"])
async def test_prefill_worker_lost_mid_prefill_decode_falls_back(
    graph: Graph, smollm2_tokenizer_dir: Path, strategy: str, fault: str
):
    scenario = f"disagg_prefill_{fault}_{strategy}"
    host, prefill, prefill_metrics_url = _start_prefill(
        graph, smollm2_tokenizer_dir, f"{fault[:3]}{strategy[0]}"
    )
    fe = graph.frontends[strategy]
    tally = Tally()
    liveness_s = LIVENESS_S if strategy == "prefill_first" else WORKER_LIVENESS_S
    bound_s = 3.0 if fault == "kill9" else liveness_s + 2.0
    front_before = graph.frontend_metrics(strategy)
    decode_before = graph.decode_metrics()
    try:
        async with client(timeout=60) as http:
            inflight = [
                asyncio.create_task(
                    stream_completion(
                        http, fe.url, MODEL, MAX_TOKENS, prompt=prompt(f"{scenario}-{i}"), timeout=40
                    )
                )
                for i in range(IN_FLIGHT)
            ]
            # Every prefill is running on the prefill worker, none done: the fault lands mid-prefill.
            await until(
                lambda: (
                    metric_value(_get(prefill_metrics_url), "dynamo_worker_inflight_requests") == IN_FLIGHT
                ),
                20,
                f"{IN_FLIGHT} prefills in flight on the prefill worker",
            )
            assert (
                metric_value(_get(prefill_metrics_url), "dynamo_worker_requests_total", outcome="completed")
                == 0
            )
            t_fault = time.monotonic()
            if fault == "kill9":
                prefill.kill9()
                tally.fault(f"kill -9 the prefill worker with {IN_FLIGHT} prefills in flight ({strategy})")
            else:
                host.cut()
                tally.fault(f"cut the prefill worker's link with {IN_FLIGHT} prefills in flight ({strategy})")
            first = await asyncio.gather(*inflight)
            done_s = time.monotonic() - t_fault
            # Requests sent after the fault, while the lost worker may still be registered.
            after = [
                await stream_completion(
                    http, fe.url, MODEL, MAX_TOKENS, prompt=prompt(f"{scenario}-after-{i}"), timeout=40
                )
                for i in range(AFTER)
            ]
            for out in [*first, *after]:
                tally.add(out)
            tally.recovery_s = round(done_s, 2)
            tally.notes["fault_to_all_in_flight_done_s"] = round(done_s, 2)
            tally.notes["max_latency_after_fault_s"] = round(max(o.latency_s for o in after), 2)
            if fault == "cut":
                # Link back: the prefill worker (it kept running) is used again for remote prefills.
                host.restore()
                t_restore = time.monotonic()
                remote_before = metric_value(
                    _get(prefill_metrics_url), "dynamo_worker_requests_total", outcome="completed"
                )
                n = 0
                while (
                    metric_value(
                        _get(prefill_metrics_url), "dynamo_worker_requests_total", outcome="completed"
                    )
                    <= remote_before
                ):
                    assert time.monotonic() - t_restore < 60, "the restored prefill worker never served again"
                    out = await stream_completion(
                        http, fe.url, MODEL, MAX_TOKENS, prompt=prompt(f"{scenario}-back-{n}"), timeout=40
                    )
                    tally.add(out)
                    n += 1
                    await asyncio.sleep(0.5)
                tally.notes["restore_to_remote_prefill_s"] = round(time.monotonic() - t_restore, 2)
    finally:
        if host.is_cut:
            host.restore()
        prefill.stop(grace=5)
    record(scenario, tally)

    assert tally.losses == 0 and tally.refused == 0, tally.summary()
    assert done_s < bound_s, (done_s, bound_s, [o.latency_s for o in first])
    assert max(o.latency_s for o in after) < 12, [o.latency_s for o in after]  # a connect timeout at most
    # Each in-flight request fell back to a local prefill, and said so.
    front_after = graph.frontend_metrics(strategy)
    fallbacks = metric_value(
        front_after, "dynamo_frontend_disagg_fallback_total", model=MODEL
    ) - metric_value(front_before, "dynamo_frontend_disagg_fallback_total", model=MODEL)
    assert fallbacks >= IN_FLIGHT, front_after
    if strategy == "decode_first":
        decode_fallbacks = metric_value(
            graph.decode_metrics(), "dynamo_worker_disagg_fallback_total"
        ) - metric_value(decode_before, "dynamo_worker_disagg_fallback_total")
        assert decode_fallbacks >= IN_FLIGHT
