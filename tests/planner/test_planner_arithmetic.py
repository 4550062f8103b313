"""The planner's replica arithmetic against cases worked out by hand: the SLA target's prefill and
decode demand, correction factors, the GPU budget and minimums, pending scale-ups, the thresholds."""

from __future__ import annotations

import math
from typing import Any

import pytest

from dynamo.planner.bounds import apply_bounds
from dynamo.planner.config import PlannerConfig
from dynamo.planner.observation import Observation, Traffic, WorkerLoad
from dynamo.planner.policy import (
    Proposal,
    SlaPolicy,
    ThresholdPolicy,
    decode_demand,
    decode_slot_demand,
    erlang_c,
    max_utilization,
    prefill_demand,
    queueing_ttft,
    slot_demand,
    slot_mean_wait,
    slot_wait_tail,
)
from dynamo.planner.profile import parse_profile
from dynamo.planner.reconcile import PoolState, reconcile, record

# Prefill: 0.1 ms per prompt token (10,000 tokens/s per engine at any ISL).
# Decode, ITL in ms by concurrency, at contexts 1000 and 3000 tokens.
PROFILE = parse_profile(
    {
        "format": "dynamo-planner-profile/1",
        "backend": "mocker",
        "prefill": {
            "engine_num_gpu": 1,
            "points": [{"isl": 100, "ttft_ms": 10}, {"isl": 1000, "ttft_ms": 100}],
        },
        "decode": {
            "engine_num_gpu": 1,
            "points": [
                {"context": 1000, "concurrency": 1, "itl_ms": 10},
                {"context": 1000, "concurrency": 8, "itl_ms": 20},
                {"context": 1000, "concurrency": 16, "itl_ms": 40},
                {"context": 3000, "concurrency": 1, "itl_ms": 20},
                {"context": 3000, "concurrency": 8, "itl_ms": 40},
                {"context": 3000, "concurrency": 16, "itl_ms": 80},
            ],
        },
    }
)
assert PROFILE.prefill is not None and PROFILE.decode is not None
PREFILL, DECODE = PROFILE.prefill, PROFILE.decode


def config(**kw: Any) -> PlannerConfig:
    return PlannerConfig.model_validate({"environment": "virtual", **kw})


# -- profile interpolation -------------------------------------------------------------------------


def test_prefill_profile_interpolates_and_extends() -> None:
    assert PREFILL.ttft(550) == pytest.approx(55)
    assert PREFILL.ttft(2000) == pytest.approx(200)  # the last segment extended
    assert PREFILL.throughput_per_gpu(1000) == pytest.approx(10_000)


def test_decode_profile_best_concurrency_under_an_itl_target() -> None:
    # ITL 30 ms at context 1000: between 8 (20 ms) and 16 (40 ms) -> 8 + 8 * 10/20 = 12 streams,
    # whose ITL is 30 ms -> 12 / 0.030 = 400 tokens/s.
    assert DECODE.max_concurrency(30, 1000) == pytest.approx(12)
    assert DECODE.throughput_per_gpu(30, 1000) == pytest.approx(400)
    # At context 3000: between 1 (20 ms) and 8 (40 ms) -> 1 + 7 * 10/20 = 4.5.
    assert DECODE.max_concurrency(30, 3000) == pytest.approx(4.5)
    # Under the least measured ITL: nothing meets it.
    assert DECODE.max_concurrency(5, 1000) == 0 and DECODE.throughput_per_gpu(5, 1000) == 0


# -- SLA arithmetic --------------------------------------------------------------------------------


def test_utilization_bound_for_a_ttft_target() -> None:
    # service 100 ms, target 500 ms: a = 4 services of wait, rho = 2a / (1 + 2a) = 8/9.
    assert max_utilization(100, 500) == pytest.approx(8 / 9)
    assert max_utilization(500, 500) == 0
    # ...and at that utilization the model's mean TTFT is the target.
    assert queueing_ttft(100, 8 / 9) == pytest.approx(500)


def test_prefill_engines_from_rate_isl_and_ttft_target() -> None:
    # 8 req/s x 1000 tokens = 8000 tokens/s; one engine: 10,000 tokens/s x 8/9 -> 0.9 engines.
    need = prefill_demand(PREFILL, rate=8, isl=1000, ttft_target_ms=500, gpus_per_engine=1)
    assert need == pytest.approx(0.9)
    # A correction factor of 2 (the engines are half as fast as profiled) doubles it.
    assert prefill_demand(PREFILL, rate=8, isl=1000, ttft_target_ms=500, gpus_per_engine=1, correction=2) == (
        pytest.approx(1.8)
    )
    # A prompt alone over the TTFT target: no number of engines helps.
    assert math.isinf(prefill_demand(PREFILL, rate=1, isl=1000, ttft_target_ms=50, gpus_per_engine=1))


def test_prefill_engines_with_two_gpus_each() -> None:
    two = parse_profile(
        {
            "format": "dynamo-planner-profile/1",
            "prefill": {"engine_num_gpu": 2, "points": [{"isl": 1000, "ttft_ms": 100}]},
        }
    )
    assert two.prefill is not None
    # 5,000 tokens/s per GPU x 2 GPUs per engine = the same 10,000 per engine.
    assert two.prefill.throughput_per_gpu(1000) == pytest.approx(5000)
    assert prefill_demand(
        two.prefill, rate=8, isl=1000, ttft_target_ms=500, gpus_per_engine=2
    ) == pytest.approx(0.9)


def test_decode_engines_from_rate_osl_and_itl_target() -> None:
    # context = 800 + 400/2 = 1000; 400 tokens/s per engine at ITL 30; 2 req/s x 400 = 800 tokens/s.
    assert decode_demand(
        DECODE, rate=2, isl=800, osl=400, itl_target_ms=30, gpus_per_engine=1
    ) == pytest.approx(2)
    # Correction 2: target 15 ms -> 1 + 7 * 5/10 = 4.5 streams at 15 ms = 300 tokens/s -> 2.67 engines.
    need = decode_demand(DECODE, rate=2, isl=800, osl=400, itl_target_ms=30, gpus_per_engine=1, correction=2)
    assert need == pytest.approx(800 / 300)


def traffic(**kw: Any) -> Traffic:
    base: dict[str, Any] = {"seconds": 10.0, "requests": 80, "isl": 1000.0, "osl": 400.0}
    return Traffic(**{**base, **kw})


def test_sla_policy_end_to_end_with_the_budget() -> None:
    cfg = config(
        optimization_target="sla",
        mode="disagg",
        throughput_adjustment_interval_seconds=10,
        ttft_ms=500,
        itl_ms=30,
        load_predictor="constant",
    )
    policy = SlaPolicy(cfg, PROFILE)
    obs = Observation(ready={"prefill": 1, "decode": 1}, traffic=traffic())
    by_role = {p.role: p for p in policy.propose(obs)}
    # prefill: 0.9 -> 1. decode at context 1200: 12 + (4.5 - 12) * 0.1 = 11.25 streams; their ITL is
    # 28.125 + 0.1 * 28.125 = 30.9375 ms -> 363.6 tokens/s; 8 req/s x 400 = 3200 -> 8.8 -> 9.
    assert by_role["prefill"].replicas == 1
    assert by_role["decode"].replicas == 9
    assert by_role["decode"].inputs["decode_engines_needed"] == pytest.approx(3200 / (11.25 / 0.0309375))
    # 1 + 9 GPUs over the default budget of 8: scaled by 0.8 -> prefill max(1, 0) = 1, decode 7.
    targets, notes = apply_bounds({"prefill": 1, "decode": 9}, cfg)
    assert targets == {"prefill": 1, "decode": 7} and notes


def test_sla_policy_scales_to_the_minimum_without_requests() -> None:
    cfg = config(optimization_target="sla", mode="disagg", min_endpoint=1, load_predictor="constant")
    policy = SlaPolicy(cfg, PROFILE)
    proposals = policy.propose(
        Observation(ready={"prefill": 3, "decode": 5}, traffic=traffic(requests=0, isl=None))
    )
    assert {(p.role, p.direction, p.replicas) for p in proposals} == {
        ("prefill", "set", 1),
        ("decode", "set", 1),
    }


def test_correction_factors_count_queueing_the_model_expects() -> None:
    cfg = config(optimization_target="sla", mode="disagg", throughput_adjustment_interval_seconds=10)
    policy = SlaPolicy(cfg, PROFILE)
    t = traffic(ttft_s=0.2, itl_s=0.03, duration_s=2.0)
    p_corr, d_corr = policy.corrections(t, {"prefill": 1, "decode": 4})
    # 8 req/s x 1000 tokens on one 10,000 tokens/s engine: rho 0.8, expected TTFT
    # 100 * (1 + 0.8 / 0.4) = 300 ms; observed 200 ms -> 2/3.
    assert p_corr == pytest.approx(200 / 300)
    # 8 req/s x 2 s / 4 workers = 4 streams each at context 1200: ITL 10 + 10*3/7 at 1000, 20 + 20*3/7 at
    # 3000 -> 1.1 x 14.2857 = 15.714 ms expected; observed 30 ms.
    assert d_corr == pytest.approx(30 / (1.1 * (10 + 30 / 7)))


def test_correction_factors_are_bounded() -> None:
    cfg = config(optimization_target="sla", mode="disagg")
    policy = SlaPolicy(cfg, PROFILE)
    p_corr, _ = policy.corrections(traffic(ttft_s=100.0), {"prefill": 8, "decode": 1})
    assert p_corr == 10.0


def test_sla_agg_sums_prefill_and_decode_demand() -> None:
    cfg = config(
        optimization_target="sla",
        mode="agg",
        throughput_adjustment_interval_seconds=10,
        itl_ms=30,
        load_predictor="constant",
    )
    (proposal,) = SlaPolicy(cfg, PROFILE).propose(Observation(ready={"decode": 1}, traffic=traffic()))
    assert proposal.role == "decode"
    assert proposal.replicas == math.ceil(0.9 + 3200 / (11.25 / 0.0309375))


# -- waiting for a batch slot (Erlang C) ------------------------------------------------------------

# An engine of two slots (the profile's largest measured concurrency): prefill 30 ms at ISL 512,
# decode ITL 5 ms at one stream and 6 ms at two.
SMALL_BATCH = parse_profile(
    {
        "format": "dynamo-planner-profile/1",
        "prefill": {"engine_num_gpu": 1, "points": [{"isl": 512, "ttft_ms": 30}]},
        "decode": {
            "engine_num_gpu": 1,
            "points": [
                {"context": 544, "concurrency": 1, "itl_ms": 5},
                {"context": 544, "concurrency": 2, "itl_ms": 6},
            ],
        },
    }
)


def test_erlang_c_by_hand() -> None:
    # c = 2, A = 1: B(1) = 1/2, B(2) = 0.5 / 2.5 = 0.2, C = 2 x 0.2 / (2 - 1 x 0.8) = 1/3.
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(3, 0.0) == 0.0 and erlang_c(2, 2.0) == 1.0
    assert slot_wait_tail(2, 1.0, hold_s=1.0, wait_s=0.5) == pytest.approx(math.exp(-0.5) / 3)
    assert slot_mean_wait(2, 1.0, hold_s=1.0) == pytest.approx(1 / 3)
    assert slot_mean_wait(2, 2.5, hold_s=1.0) == math.inf


def test_slot_demand_by_hand() -> None:
    # rate 2/s, 1 s each, 1 slot per engine, 0.5 s budget. c = 3: C = 0.4444, tail 0.4444 e^-0.5 = 0.27;
    # c = 4: C = 0.1739, tail 0.1739 e^-1 = 0.064; c = 5: C = 0.0597, tail 0.0597 e^-1.5 = 0.013 <= 0.05.
    assert slot_demand(2.0, 1.0, 1, 0.5) == 5.0
    assert slot_demand(0.0, 1.0, 1, 0.5) == 0.0


def test_small_batches_need_slots_beyond_throughput() -> None:
    decode = SMALL_BATCH.decode
    assert decode is not None and decode.batch_limit == 2
    # 20 req/s x (30 + 64 x 6 ms) = 8.28 slots busy; throughput alone: 20 x 64 / (2 / 6 ms) = 3.84 engines.
    tput = decode_demand(decode, rate=20, isl=512, osl=64, itl_target_ms=20, gpus_per_engine=1)
    assert tput == pytest.approx(20 * 64 / (2 / 0.006))
    slots = decode_slot_demand(
        decode, rate=20, isl=512, osl=64, itl_target_ms=20, wait_budget_ms=170, prefill_ms=30
    )
    assert slots == slot_demand(20, 0.414, 2, 0.170)
    assert slot_wait_tail(int(slots) * 2, 20 * 0.414, 0.414, 0.170) <= 0.05
    assert slot_wait_tail(int(slots - 1) * 2, 20 * 0.414, 0.414, 0.170) > 0.05
    cfg = config(
        optimization_target="sla", mode="agg", ttft_ms=200, itl_ms=20, load_predictor="constant",
        throughput_adjustment_interval_seconds=5,
    )  # fmt: skip
    obs = Observation(ready={"decode": 4}, traffic=Traffic(seconds=5, requests=100, isl=512, osl=64))
    (p,) = SlaPolicy(cfg, SMALL_BATCH).propose(obs)
    assert p.replicas == slots and p.inputs["decode_slot_engines_needed"] == slots


def test_waiting_requests_are_served_within_the_next_interval() -> None:
    cfg = config(
        optimization_target="sla", mode="agg", ttft_ms=200, itl_ms=20, load_predictor="constant",
        throughput_adjustment_interval_seconds=5,
    )  # fmt: skip
    loads = [WorkerLoad(1, "decode", active=2, waiting=50, kv_active_blocks=0, kv_total_blocks=100)]
    obs = Observation(
        ready={"decode": 1}, traffic=Traffic(seconds=5, requests=50, isl=512, osl=64), loads=loads
    )
    (p,) = SlaPolicy(cfg, SMALL_BATCH).propose(obs)
    assert SMALL_BATCH.decode is not None
    # 10 req/s forecast + 50 waiting / 5 s = 20 req/s.
    assert p.replicas == decode_slot_demand(
        SMALL_BATCH.decode, rate=20, isl=512, osl=64, itl_target_ms=20, wait_budget_ms=170, prefill_ms=30
    )


def test_saturated_intervals_keep_the_last_correction() -> None:
    cfg = config(optimization_target="sla", mode="agg", ttft_ms=200, itl_ms=20)
    policy = SlaPolicy(cfg, SMALL_BATCH)
    calm = Traffic(seconds=5, requests=10, isl=512, osl=64, ttft_s=0.06, duration_s=0.4)
    p_corr, _ = policy.corrections(calm, {"decode": 2})
    # 2 req/s x 0.4 s = 0.8 slots of 4: Erlang C wait 0.8^4/4! x 4/3.2 / (sum ...) x 0.4 / 3.2, small.
    expected = queueing_ttft(30, 2 * 512 / (512 / 0.03 * 2)) + slot_mean_wait(4, 0.8, 0.4) * 1000
    assert p_corr == pytest.approx(60 / expected)
    # 20 req/s x 0.4 s = 8 slots busy of 4: saturated; a 5 s TTFT is the backlog's, not the engine's.
    jam = Traffic(seconds=5, requests=100, isl=512, osl=64, ttft_s=5.0, duration_s=0.4)
    assert policy.corrections(jam, {"decode": 2})[0] == p_corr


def test_sla_policy_needs_the_tables_its_mode_uses() -> None:
    decode_only = parse_profile(
        {
            "format": "dynamo-planner-profile/1",
            "decode": {"points": [{"context": 1, "concurrency": 1, "itl_ms": 1}]},
        }
    )
    with pytest.raises(ValueError, match="no prefill table"):
        SlaPolicy(config(optimization_target="sla", mode="disagg"), decode_only)


# -- bounds ----------------------------------------------------------------------------------------


def test_bounds_keep_the_minimum() -> None:
    targets, notes = apply_bounds({"decode": 0}, config(mode="agg", min_endpoint=2))
    assert targets == {"decode": 2} and "min_endpoint" in notes[0]


def test_budget_counts_gpus_per_engine() -> None:
    cfg = config(max_gpu_budget=8, prefill_engine_num_gpu=2, decode_engine_num_gpu=1)
    # 3 x 2 + 9 x 1 = 15 GPUs > 8: x 8/15 -> prefill floor(1.6) = 1, decode floor(4.8) = 4 (6 GPUs).
    assert apply_bounds({"prefill": 3, "decode": 9}, cfg)[0] == {"prefill": 1, "decode": 4}
    # Within budget: unchanged.
    assert apply_bounds({"prefill": 1, "decode": 6}, cfg) == ({"prefill": 1, "decode": 6}, [])


def test_minimums_win_over_the_budget() -> None:
    cfg = config(max_gpu_budget=3, min_endpoint=2)
    targets, notes = apply_bounds({"prefill": 5, "decode": 5}, cfg)
    assert targets == {"prefill": 2, "decode": 2}
    assert any("over the budget" in n for n in notes)


def test_no_budget_and_unmeetable_targets() -> None:
    assert apply_bounds({"decode": 40}, config(max_gpu_budget=-1))[0] == {"decode": 40}
    assert apply_bounds({"decode": None}, config(max_gpu_budget=8, decode_engine_num_gpu=2))[0] == {
        "decode": 4
    }
    assert apply_bounds({"decode": None}, config(max_gpu_budget=-1, min_endpoint=1))[0] == {"decode": 1}


# -- pending scale-ups -----------------------------------------------------------------------------


def test_young_pending_replicas_are_waited_for() -> None:
    state = PoolState(target=2, pending_since=100.0)
    assert reconcile(Proposal("decode", "up"), ready=1, state=state, now=105.0, timeout=10) == (2, 0)
    assert reconcile(Proposal("decode", "hold"), ready=1, state=state, now=105.0, timeout=10) == (2, 0)
    two_young = PoolState(target=3, pending_since=100.0)
    assert reconcile(Proposal("decode", "up"), ready=1, state=two_young, now=105.0, timeout=10) == (3, 0)


def test_stuck_pending_replicas_do_not_stall_the_planner() -> None:
    state = PoolState(target=2, pending_since=100.0)  # asked for 2 at t=100; 1 is ready at t=111
    # Still loaded: one more than what is ready, plus one for the stuck replica.
    assert reconcile(Proposal("decode", "up"), ready=1, state=state, now=111.0, timeout=10) == (3, 1)
    # Load steady: the stuck replica is dropped (the connector drains not-ready replicas first).
    assert reconcile(Proposal("decode", "hold"), ready=1, state=state, now=111.0, timeout=10) == (1, 1)
    # Load gone: down from what is ready, whatever is pending.
    assert reconcile(Proposal("decode", "down"), ready=1, state=state, now=111.0, timeout=10) == (0, 1)
    # SLA: a target above the ready count gets the stuck replicas on top; one below does not.
    assert reconcile(Proposal("decode", "set", 4), ready=1, state=state, now=111.0, timeout=10) == (5, 1)
    assert reconcile(Proposal("decode", "set", 1), ready=1, state=state, now=111.0, timeout=10) == (1, 1)


def test_record_tracks_when_a_target_became_pending() -> None:
    state = PoolState()
    record(state, 2, ready=1, now=10.0)
    assert state.pending_since == 10.0
    record(state, 2, ready=1, now=15.0)  # the same ask, still short: its clock runs on
    assert state.pending_since == 10.0
    record(state, 3, ready=1, now=20.0)  # a new ask restarts the clock
    assert state.pending_since == 20.0
    record(state, 3, ready=3, now=30.0)
    assert state.pending_since is None and state.target == 3


# -- thresholds ------------------------------------------------------------------------------------


def load(role: str, active_blocks: int, waiting: int = 0, total: int = 64, wid: int = 1) -> WorkerLoad:
    return WorkerLoad(
        wid, role, active=1, waiting=waiting, kv_active_blocks=active_blocks, kv_total_blocks=total
    )


def test_load_target_decode_thresholds() -> None:
    policy = ThresholdPolicy(
        config(
            mode="agg", optimization_target="load", decode_scale_up_kv_rate=60, decode_scale_down_kv_rate=10
        )
    )
    up = policy.propose(
        Observation(
            ready={"decode": 2}, traffic=None, loads=[load("decode", 40, wid=1), load("decode", 1, wid=2)]
        )
    )
    assert up[0].direction == "up"  # 40/64 = 62.5% >= 60% on one worker
    down = policy.propose(
        Observation(
            ready={"decode": 2}, traffic=None, loads=[load("decode", 6, wid=1), load("decode", 0, wid=2)]
        )
    )
    assert down[0].direction == "down"  # 9.4% and 0% <= 10%
    hold = policy.propose(
        Observation(
            ready={"decode": 2}, traffic=None, loads=[load("decode", 20, wid=1), load("decode", 0, wid=2)]
        )
    )
    assert hold[0].direction == "hold"


def test_waiting_prompts_count_as_kv_use() -> None:
    policy = ThresholdPolicy(config(mode="agg", optimization_target="throughput"))
    t = Traffic(seconds=1, requests=1, isl=160)  # 160-token prompts = 10 blocks of 16
    obs = Observation(ready={"decode": 1}, traffic=t, loads=[load("decode", 60, waiting=1)], block_size=16)
    # (60 + 1 x 10) / 64 = 109% > 100%: up (throughput's static threshold).
    (p,) = policy.propose(obs)
    assert p.direction == "up" and p.inputs["max_kv_use"] == pytest.approx(70 / 64)


def test_latency_target_is_more_eager_than_throughput() -> None:
    obs = Observation(ready={"decode": 1}, traffic=None, loads=[load("decode", 40)])  # 62.5%
    assert (
        ThresholdPolicy(config(mode="agg", optimization_target="latency")).propose(obs)[0].direction == "up"
    )
    assert (
        ThresholdPolicy(config(mode="agg", optimization_target="throughput")).propose(obs)[0].direction
        == "hold"
    )


def test_prefill_thresholds_on_queued_prompt_tokens() -> None:
    cfg = config(
        mode="prefill",
        optimization_target="load",
        prefill_scale_up_queue_tokens=1000,
        prefill_scale_down_queue_tokens=0,
    )
    policy = ThresholdPolicy(cfg)
    t = Traffic(seconds=1, requests=4, isl=300)
    busy = Observation(ready={"prefill": 1}, traffic=t, loads=[load("prefill", 0, waiting=4)])
    assert policy.propose(busy)[0].direction == "up"  # 4 x 300 = 1200 >= 1000
    idle = Observation(ready={"prefill": 1}, traffic=t, loads=[load("prefill", 0, waiting=0)])
    assert policy.propose(idle)[0].direction == "down"
    # throughput target: queued / context length, up at 1.0.
    thr = ThresholdPolicy(config(mode="prefill", optimization_target="throughput"))
    ctx_obs = Observation(
        ready={"prefill": 1}, traffic=t, loads=[load("prefill", 0, waiting=7)], context_length=2048
    )
    assert thr.propose(ctx_obs)[0].direction == "up"  # 2100 / 2048 >= 1.0


def test_no_reports_means_hold() -> None:
    (p,) = ThresholdPolicy(config(mode="agg")).propose(Observation(ready={"decode": 0}, traffic=None))
    assert p.direction == "hold"
