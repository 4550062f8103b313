"""The profiler's pure parts, against hand-worked cases: the request in both DGDR shapes (every
field honoured or refused by name), the sizing arithmetic of aggregated and disaggregated graphs,
and the generated graph."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest

from dynamo.deploy.request import DeploymentRequest, parse_request
from dynamo.deploy.spec import SpecError, parse_graph
from dynamo.operator.render import RenderContext, render_graph
from dynamo.profiler.engines import Candidate, engine
from dynamo.profiler.generate import generate_graph
from dynamo.profiler.select import (
    SelectionError,
    load_rate,
    replay_spec,
    select,
    slot_hold_s,
    slot_rate,
    slot_tail,
)
from dynamo.profiler.sweep import Measurement, Replay, SweepPlan, sweep_plan


def dgdr(spec: dict[str, Any], version: str = "v1beta1") -> dict[str, Any]:
    return {
        "apiVersion": f"nvidia.com/{version}",
        "kind": "DynamoGraphDeploymentRequest",
        "metadata": {"name": "req", "namespace": "ns1"},
        "spec": {"model": "Qwen/Qwen3-0.6B", "backend": "vllm", **spec},
    }


# -- the request ----------------------------------------------------------------------------------


def test_both_shapes_carry_every_sla_field() -> None:
    beta = parse_request(
        dgdr(
            {
                "workload": {"isl": 3000, "osl": 150, "requestRate": 2.5},
                "sla": {"ttft": 200, "itl": 20, "optimizationType": "latency"},
                "features": {
                    "mocker": {"enabled": True},
                    "kvRouter": {"enabled": True},
                    "planner": {"min_endpoint": 2},
                },
                "hardware": {"totalGpus": 6},
                "searchStrategy": "thorough",
                "overrides": {"trustRemoteCode": True},
            }
        )
    )
    assert (beta.isl, beta.osl, beta.request_rate, beta.ttft_ms, beta.itl_ms) == (3000, 150, 2.5, 200, 20)
    assert beta.optimization == "latency" and beta.mocker and beta.kv_router and beta.trust_remote_code
    assert beta.planner == {"min_endpoint": 2} and beta.total_gpus == 6 and beta.search_strategy == "thorough"
    assert beta.auto_apply  # v1beta1's default
    alpha = parse_request(
        dgdr(
            {
                "sla": {"ttft": 200, "itl": 20, "isl": 3000, "osl": 150},
                "useMocker": True,
                "deploymentOverrides": {"name": "qwen", "labels": {"team": "a"}, "workersImage": "img:1"},
            },
            "v1alpha1",
        )
    )
    assert (alpha.isl, alpha.osl, alpha.ttft_ms, alpha.itl_ms, alpha.mocker) == (3000, 150, 200, 20, True)
    assert alpha.graph_name == "qwen" and alpha.dgd_labels == {"team": "a"} and alpha.workers_image == "img:1"
    assert not alpha.auto_apply  # v1alpha1's default
    # Written in both shapes: fine when equal, an error when not.
    assert parse_request(dgdr({"workload": {"isl": 100}, "sla": {"isl": 100}})).isl == 100
    with pytest.raises(SpecError, match="input sequence length is written twice"):
        parse_request(dgdr({"workload": {"isl": 100}, "sla": {"isl": 200}}))
    defaults = parse_request(dgdr({}))
    assert (defaults.isl, defaults.osl, defaults.ttft_ms, defaults.itl_ms) == (4000, 1000, 2000, 30)
    assert DeploymentRequest.from_json(beta.to_json()) == beta


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"backend": "auto"}, "spec.backend 'auto' (choose one for me) is not built"),
        ({"sla": {"e2eLatency": 500}}, "spec.sla.e2eLatency is not built"),
        ({"hardware": {"gpuSku": "h100_sxm"}}, "spec.hardware.gpuSku is not built"),
        ({"gpuType": "h100_sxm"}, "spec.gpuType is not built"),
        ({"modelCache": {"pvcName": "x"}}, "spec.modelCache is not built"),
        ({"profilingConfig": {"config": {}}}, "spec.profilingConfig is not built"),
        ({"workload": {"concurrency": 4, "requestRate": 2}}, "exclude each other"),
        ({"deploymentOverrides": {"namespace": "other"}}, "differs from the request's namespace"),
        ({"sla": {"ttft": 0}}, "spec.sla.ttft must be a positive number"),
        ({"workload": {"isl": 10.5}}, "spec.workload.isl must be a positive whole number"),
        ({"workload": {"rps": 3}}, "spec.workload.rps is not a field"),
        ({"surprise": 1}, "spec has unknown fields: surprise"),
    ],
)
def test_what_is_not_built_or_wrong_is_refused_by_name(spec: dict[str, Any], words: str) -> None:
    with pytest.raises(SpecError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_request(dgdr(spec))


# -- sizing, by hand ------------------------------------------------------------------------------


def flat(batch: int, ttft_ms: float = 100.0, itl_ms: float = 10.0) -> Measurement:
    """An engine whose lone TTFT is ``ttft_ms`` at any ISL and whose ITL is ``itl_ms`` at any load."""
    return Measurement(
        Candidate(batch),
        prefill=[(500, ttft_ms), (2000, ttft_ms)],
        decode=[(1000, 1, itl_ms), (1000, batch, itl_ms)],
    )


def request(**fields: Any) -> DeploymentRequest:
    base = DeploymentRequest(
        name="r", namespace=None, model="m", backend="vllm", isl=1000, osl=100, request_rate=5
    )
    return replace(base, **fields)


def test_aggregated_sizing_by_hand() -> None:
    # 5 req/s on one engine: prefill share rho = 5 x 0.1 s = 0.5; TTFT = 100 (1 + 0.5 / (2 x 0.5)) = 150 ms;
    # ITL = 10 / (1 - 0.5) = 20 ms; decode concurrency = 5 x 100 x 0.020 = 10 <= batch 16.
    sel = select(request(ttft_ms=300, itl_ms=20), [flat(16)], "mocker")
    o = sel.option
    assert (o.mode, o.decode_replicas, o.gpus) == ("agg", 1, 1)
    assert o.ttft_ms == pytest.approx(150) and o.itl_ms == pytest.approx(20)
    # ITL 15 ms: one engine gives 20; two give rho 0.25, ITL 13.3, TTFT 116.7. Disaggregated also
    # needs two (prefill 5 x 1000 / (10000 x 0.8) = 0.63 -> 1; decode 500 / 1600 = 0.31 -> 1):
    # a tie in GPUs, and throughput prefers the aggregated graph.
    sel = select(request(ttft_ms=300, itl_ms=15), [flat(16)], "mocker")
    assert (sel.option.mode, sel.option.gpus) == ("agg", 2)
    assert sel.option.itl_ms == pytest.approx(10 / 0.75) and sel.option.ttft_ms == pytest.approx(
        100 * (1 + 0.25 / 1.5)
    )
    disagg = next(a for a in sel.alternatives if a.mode == "disagg")
    assert (disagg.prefill_replicas, disagg.decode_replicas) == (1, 1)
    # latency: disaggregated wins (TTFT 150 + 100 x 10 = 1150 ms against 116.7 + 100 x 13.3 = 1450 ms).
    sel = select(request(ttft_ms=300, itl_ms=15, optimization="latency"), [flat(16)], "mocker")
    assert (sel.option.mode, sel.option.prefill_replicas, sel.option.decode_replicas) == ("disagg", 1, 1)
    assert sel.profile.prefill is not None and sel.profile.decode is not None


def test_the_batch_size_bounds_concurrency_and_the_budget_bounds_the_graph() -> None:
    # Batch 4 cannot hold the 10 streams one engine would carry: the larger batch wins.
    sel = select(request(ttft_ms=300, itl_ms=20), [flat(4), flat(16)], "mocker")
    assert sel.option.decode.batch == 16 and sel.option.gpus == 1
    # 50 req/s: prefill alone is 5 engines' worth (rho 0.5 each needs 10); a budget of 4 cannot.
    with pytest.raises(SelectionError, match="50 req/s needs more than 4 engines"):
        select(request(ttft_ms=300, itl_ms=20, request_rate=50, total_gpus=4), [flat(16)], "mocker")
    # Without hardware.totalGpus the planner's budget bounds it (its planner would cut more at once).
    with pytest.raises(SelectionError, match="50 req/s needs more than 3 engines"):
        select(
            request(ttft_ms=300, itl_ms=20, request_rate=50, planner={"max_gpu_budget": 3}),
            [flat(16)],
            "mocker",
        )
    assert select(request(ttft_ms=300, itl_ms=20, request_rate=50), [flat(16)], "mocker").option.gpus > 4


def test_no_configuration_says_what_came_closest() -> None:
    with pytest.raises(SelectionError, match=r"lone 1000-token prompt already takes 100\.0 ms"):
        select(request(ttft_ms=50, itl_ms=20), [flat(8)], "mocker")
    with pytest.raises(SelectionError, match=r"decodes at 10\.00 ms per token"):
        select(request(ttft_ms=300, itl_ms=5), [flat(8)], "mocker")


def test_load_from_concurrency_and_no_load() -> None:
    # The fastest request: 100 ms + 100 x 10 ms = 1.1 s, so 11 concurrent requests are at most 10 req/s.
    profiles = [flat(16).profile("mocker")]
    assert load_rate(request(request_rate=None, concurrency=11), profiles) == pytest.approx(10)
    sel = select(request(request_rate=None, ttft_ms=300, itl_ms=20), [flat(8), flat(16)], "mocker")
    assert sel.rate is None and sel.option.gpus == 1 and "no load stated" in sel.reason


def test_sweep_plan_follows_the_strategy() -> None:
    rapid = sweep_plan(request(isl=1000, osl=100))
    assert rapid.isls == (500, 1000, 1500) and rapid.contexts == (1050,) and rapid.gen == 32
    assert rapid.concurrencies(Candidate(16)) == [1, 8, 16]
    thorough = sweep_plan(request(isl=1000, osl=100, search_strategy="thorough"))
    assert len(thorough.isls) == 5 and len(thorough.contexts) == 3
    assert SweepPlan((1,), (1,), 8, 1, True).concurrencies(Candidate(12)) == [1, 2, 4, 8, 12]


# -- the generated graph --------------------------------------------------------------------------


def test_generated_disaggregated_graph_with_planner_and_router() -> None:
    req = request(
        kv_router=True, planner={"throughput_adjustment_interval_seconds": 30}, total_gpus=8, namespace="ns1"
    )
    eng = engine(req, "gpu")
    doc = generate_graph(req, eng, mode="disagg", prefill=(Candidate(8), 2), decode=(Candidate(16), 3))
    services = doc["spec"]["services"]
    assert set(services) == {"Frontend", "Planner", "VllmDecodeWorker", "VllmPrefillWorker"}
    assert services["Frontend"]["envs"] == [{"name": "DYN_ROUTER_MODE", "value": "kv"}]
    prefill, decode = services["VllmPrefillWorker"], services["VllmDecodeWorker"]
    assert (
        prefill["replicas"],
        prefill["subComponentType"],
        decode["replicas"],
        decode["subComponentType"],
    ) == (
        2,
        "prefill",
        3,
        "decode",
    )
    assert "--is-prefill-worker --max-num-seqs 8" in prefill["extraPodSpec"]["mainContainer"]["args"][0]
    assert "--max-num-seqs 16" in decode["extraPodSpec"]["mainContainer"]["args"][0]
    assert decode["resources"] == {"limits": {"gpu": "1"}}
    config = json.loads(services["Planner"]["extraPodSpec"]["mainContainer"]["args"][1])
    assert config == {
        "environment": "kubernetes",
        "backend": "vllm",
        "mode": "disagg",
        "optimization_target": "sla",
        "ttft_ms": req.ttft_ms,
        "itl_ms": req.itl_ms,
        "profile_results_dir": "/workspace/profiling_results",
        "max_gpu_budget": 8,
        "throughput_adjustment_interval_seconds": 30,
    }
    objs = render_graph(parse_graph(doc), RenderContext("ns1", "u", planner_role=("ClusterRole", "p")))
    kinds = sorted(o["kind"] for o in objs)
    assert kinds.count("Deployment") == 4 and "RoleBinding" in kinds


def test_generated_graph_refuses_contradictions() -> None:
    req = request(planner={"ttft_ms": 999})
    with pytest.raises(SpecError, match=r"features.planner.ttft_ms \(999\) differs from the request's SLA"):
        generate_graph(req, engine(req, "gpu"), mode="agg", prefill=None, decode=(Candidate(8), 1))
    req = request(dgd_overrides={"spec": {"services": {"Nope": {"replicas": 2}}}})
    with pytest.raises(SpecError, match="names services the generated graph does not have: Nope"):
        generate_graph(req, engine(req, "gpu"), mode="agg", prefill=None, decode=(Candidate(8), 1))
    req = request(
        dgd_overrides={"metadata": {"name": "mine"}, "spec": {"services": {"Frontend": {"replicas": 2}}}}
    )
    doc = generate_graph(req, engine(req, "gpu"), mode="agg", prefill=None, decode=(Candidate(8), 1))
    assert doc["metadata"]["name"] == "mine" and doc["spec"]["services"]["Frontend"]["replicas"] == 2


# -- the replayed workload decides ----------------------------------------------------------------


def replayed(m: Measurement, *runs: tuple[int, int, int]) -> Measurement:
    """``m`` with replays of (engines, requests, within) at 5 req/s split over ``engines``; medians
    TTFT 100 ms, ITL 12 ms (p90 15 ms): a slot is held 0.1 + 99 x 0.015 = 1.585 s, so one engine's
    16 slots carry 7.9 and few requests wait for one."""
    m.replays = [Replay(n, 5 / n, 60, requests, within, 0, 100, 250, 12, 15) for n, requests, within in runs]
    return m


def test_replay_scores_each_request_against_both_targets() -> None:
    # TTFT <= 200 and ITL <= 20: only the first is within; the third misses on ITL, the second on
    # TTFT; the fourth failed. Medians of the three that finished: TTFT (100, 100, 300) -> 100.
    r = Replay.score(1, 2.0, 30, [(100, 10), (300, 10), (100, 50), None], 200, 20)
    assert (r.requests, r.within, r.failed) == (4, 1, 1) and r.attainment == pytest.approx(0.25)
    assert (r.ttft_p50_ms, r.ttft_p90_ms, r.itl_p50_ms, r.itl_p90_ms) == (100, 300, 10, 50)
    assert "1/4 within the SLA (25%), 1 failed" in r.describe()


def test_a_candidate_whose_replay_misses_is_rejected_and_said_so() -> None:
    # The tables say one engine holds 5 req/s (the first hand-worked case above); the replay of the
    # workload on it kept 84 of 100 within the SLA: below 90%, so with a budget of one engine
    # nothing is left, and the error says what the replay measured.
    req = request(ttft_ms=300, itl_ms=20, total_gpus=1)
    with pytest.raises(
        SelectionError, match=r"batch 16: the replayed workload does not hold 90%.*84/100 within"
    ):
        select(req, [replayed(flat(16), (1, 100, 84))], "mocker")
    # Without the replay the same tables pass: the replay is what rejects.
    assert select(req, [flat(16)], "mocker").option.gpus == 1


def test_the_fewest_engines_whose_replay_passes_win() -> None:
    # One engine's share missed (85%), two engines' share (2.5 req/s each) passed (95%): two engines,
    # and the option carries that replay's medians; a budget of 1 leaves nothing.
    sel = select(request(ttft_ms=300, itl_ms=20), [replayed(flat(16), (1, 100, 85), (2, 50, 48))], "mocker")
    o = sel.option
    assert (o.mode, o.decode_replicas, o.gpus) == ("agg", 2, 2) and o.replay is not None
    assert (o.ttft_ms, o.itl_ms) == (100, 12) and "replayed: 2.5 req/s (2 engine(s)' share)" in sel.reason
    assert sel.rejected == []
    # Another candidate that passes on one engine beats it; the one that failed everywhere is named.
    sel = select(
        request(ttft_ms=300, itl_ms=20),
        [replayed(flat(8), (1, 100, 70), (2, 50, 40), (3, 33, 29)), replayed(flat(16), (1, 100, 91))],
        "mocker",
    )
    assert (sel.option.decode.batch, sel.option.gpus) == (16, 1)
    assert len(sel.rejected) == 1 and sel.rejected[0].startswith(
        "batch 8: the replayed workload does not hold"
    )


def test_replays_start_where_the_tables_say_and_stay_in_the_budget() -> None:
    # At ITL 15 ms the tables need two engines (second hand-worked case): the replay starts at 2.
    spec = replay_spec(request(ttft_ms=300, itl_ms=15), "mocker")
    assert spec is not None and (spec.rate, spec.limit) == (5, 64)
    assert spec.first_engines(flat(16)) == 2
    # A budget of one engine, which the tables say is too few: the one engine allowed is replayed.
    spec = replay_spec(request(ttft_ms=300, itl_ms=15, total_gpus=1), "mocker")
    assert spec is not None and spec.first_engines(flat(16)) == 1
    assert replay_spec(request(request_rate=None), "mocker") is None


def test_a_replay_without_bursts_is_not_taken_for_one_that_holds_them() -> None:
    # One slot (batch 1): Erlang C is the utilization A, and the share waiting past w seconds is
    # A exp(-(1 - A) w / S). The replay held a slot S = 0.1 + (11 - 1) x 0.09 = 1.0 s; at 0.5 req/s
    # A = 0.5. TTFT target 2100 ms leaves w = 2.0 s after the 100 ms median TTFT: 0.5 e^-1 = 18%
    # would wait past it, over the 10% allowed, so the replay's 30/30 does not pass; 4100 ms leaves
    # w = 4 s: 0.5 e^-2 = 6.8%, and it does.
    req = request(isl=100, osl=11, request_rate=0.5, ttft_ms=2100, itl_ms=100, total_gpus=1)
    r = Replay(1, 0.5, 60, 30, 30, 0, 100, 150, 80, 90)
    m = Measurement(Candidate(1), prefill=[(50, 100), (200, 100)], decode=[(105, 1, 80)], replays=[r])
    assert slot_hold_s(req, r) == pytest.approx(1.0)
    assert slot_tail(req, 1, r) == pytest.approx(0.5 * math.exp(-1))
    # The rate this hold time allows: A e^(-2 (1 - A)) = 10% at A = 0.36 (0.35 -> 9.5%, 0.36 -> 10.0%).
    assert slot_rate(req, 1, r) == pytest.approx(0.36, abs=0.01)
    with pytest.raises(SelectionError, match=r"18% would wait past the TTFT budget, 0.36 req/s per engine"):
        select(req, [m], "mocker")
    longer = replace(req, ttft_ms=4100)
    assert slot_tail(longer, 1, r) == pytest.approx(0.5 * math.exp(-2))
    sel = select(longer, [m], "mocker")
    assert sel.option.gpus == 1 and sel.option.replay is r
