"""From measured candidates to the smallest graph that meets the SLA at the stated load.

Contract: every candidate is sized two ways, and the smallest feasible option wins
(``optimizationType: throughput``: fewest GPUs, then aggregated before disaggregated, then the
lower predicted ITL; ``latency``: the lowest predicted request latency, TTFT + OSL x ITL, then the
fewest GPUs). Predictions come from the measured tables only:

- **disaggregated** (prefill candidate x decode candidate): the planner's own arithmetic
  (``dynamo.planner.policy.prefill_demand`` / ``decode_demand``), rounded up, at least one each;
  the TTFT is the M/D/1 queueing TTFT at the prefill pool's utilization. KV transfer time is not
  in the profile (the planner's TTFT correction absorbs it at run time).
- **aggregated** (one candidate): the fewest engines n for which, with each engine taking rate/n,
  the prefill share of its time rho = rate/n x TTFT_alone keeps the queueing TTFT within the
  target, and the decode ITL at the resulting concurrency (Little's law, within the batch size),
  stretched by 1 / (1 - rho) for the steps spent on prefill, is within the ITL target. That model
  sees neither prefills arriving into a running decode batch nor requests waiting for a free batch
  slot when Poisson arrivals bunch, so when the sweep replayed the stated workload on the candidate
  (``Measurement.replays``: the rate's share for n engines, n from this model's answer up), the
  replays decide: the fewest engines whose replay passed. A replay passes when at least
  ``ATTAINMENT_GOAL`` of its requests were within both targets **and** the bursts a minute of
  Poisson arrivals may not contain would not break it: with the hold time of a batch slot the
  replay measured (its median TTFT + (OSL - 1) x its p90 ITL: slots run out when the batch is full,
  which is when steps are slowest), at most ``1 - ATTAINMENT_GOAL`` of the requests may wait for one
  of the candidate's batch slots past what the TTFT target leaves after the prefill (Erlang C,
  ``slot_tail``). A candidate none of whose replays passed is rejected with the rate its measured
  hold time would allow (``Selection.rejected``, and the error's words when nothing is left).
  Disaggregated options cannot be replayed on one engine: they are sized by the tables only, and
  the reason says so.

The load is ``requestRate``, or ``concurrency`` turned into a rate with the fastest measured
request latency (an upper bound: more replicas, never fewer). With neither, the graph is one
aggregated engine (the planner, when enabled, sizes it at run time). ``hardware.totalGpus``, else the
planner's ``max_gpu_budget``, bounds the GPUs (a graph its own planner would cut at once is no
answer). No feasible option raises ``SelectionError`` saying what was closest.

Journey: profiling only: sweep -> **select** -> generate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dynamo.deploy.request import DeploymentRequest
from dynamo.planner.policy import (
    MAX_UTILIZATION,
    decode_demand,
    prefill_demand,
    queueing_ttft,
    slot_wait_tail,
)
from dynamo.planner.profile import PerformanceProfile
from dynamo.profiler.engines import Candidate
from dynamo.profiler.sweep import Measurement, Replay, ReplaySpec

MAX_ENGINES = 64  # the most replicas sized without a GPU budget
ATTAINMENT_GOAL = 0.9  # share of replayed requests within both SLA targets for a candidate to pass


class SelectionError(RuntimeError):
    """No measured configuration meets the SLA; the message says what came closest."""


@dataclass(frozen=True)
class Option:
    """One sized graph."""

    mode: str  # agg | disagg
    decode: Candidate
    decode_replicas: int
    prefill: Candidate | None
    prefill_replicas: int
    ttft_ms: float  # predicted at the stated load (replayed: the replay's median)
    itl_ms: float
    replay: Replay | None = None  # the replay that passed (aggregated options of replayed candidates)

    @property
    def gpus(self) -> int:
        return self.decode_replicas + self.prefill_replicas

    def latency_ms(self, osl: int) -> float:
        return self.ttft_ms + osl * self.itl_ms

    def to_json(self, osl: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "gpus": self.gpus,
            "decode": {"batch": self.decode.batch, "replicas": self.decode_replicas},
            "predicted_ttft_ms": round(self.ttft_ms, 2),
            "predicted_itl_ms": round(self.itl_ms, 3),
            "predicted_latency_ms": round(self.latency_ms(osl), 1),
        }
        if self.prefill is not None:
            out["prefill"] = {"batch": self.prefill.batch, "replicas": self.prefill_replicas}
        if self.replay is not None:
            out["replay"] = self.replay.to_json()
        return out


@dataclass(frozen=True)
class Selection:
    """The chosen option, the profile the planner gets, and why."""

    option: Option
    profile: PerformanceProfile
    rate: float | None
    reason: str
    alternatives: list[Option]
    rejected: list[str]  # candidates the replays ruled out, and why


def _decode_itl(
    profile: PerformanceProfile, rate_per_engine: float, osl: int, context: float, stretch: float
) -> tuple[float, float]:
    """(ITL ms, concurrency) per engine at a request rate, by Little's law (fixed point)."""
    assert profile.decode is not None
    itl = profile.decode.itl(1, context) * stretch
    conc = 1.0
    for _ in range(50):
        conc = max(1.0, rate_per_engine * osl * itl / 1000)
        new = profile.decode.itl(conc, context) * stretch
        if abs(new - itl) < 1e-6:
            break
        itl = new
    return itl, conc


def slot_hold_s(request: DeploymentRequest, r: Replay) -> float:
    """Seconds a request holds a batch slot, as the replay measured it (at its p90 ITL)."""
    return (r.ttft_p50_ms + max(0, request.osl - 1) * r.itl_p90_ms) / 1000


def slot_tail(request: DeploymentRequest, batch: int, r: Replay, rate: float | None = None) -> float:
    """Share of requests at ``rate`` (default: the replay's) that wait for one of ``batch`` slots
    longer than the TTFT target leaves after the replay's median TTFT (Erlang C, M/M/c)."""
    if math.isnan(r.ttft_p50_ms) or math.isnan(r.itl_p90_ms):
        return 1.0
    hold = slot_hold_s(request, r)
    wait = (request.ttft_ms - r.ttft_p50_ms) / 1000
    if wait <= 0 or hold <= 0:
        return 1.0
    return slot_wait_tail(batch, (r.rate if rate is None else rate) * hold, hold, wait)


def replay_passes(request: DeploymentRequest, m: Measurement, r: Replay) -> bool:
    return r.attainment >= ATTAINMENT_GOAL and slot_tail(request, m.candidate.batch, r) <= 1 - ATTAINMENT_GOAL


def slot_rate(request: DeploymentRequest, batch: int, r: Replay) -> float:
    """The highest rate (req/s, to 1%) at which the replay's hold time keeps the slot-wait tail
    within ``1 - ATTAINMENT_GOAL`` (0 when even a trickle would not)."""
    low, high = 0.0, batch / max(slot_hold_s(request, r), 1e-9)
    if slot_tail(request, batch, r, rate=high * 1e-6) > 1 - ATTAINMENT_GOAL:
        return 0.0
    while high - low > 0.01 * high:
        mid = (low + high) / 2
        low, high = (
            (mid, high) if slot_tail(request, batch, r, rate=mid) <= 1 - ATTAINMENT_GOAL else (low, mid)
        )
    return low


def size_agg(
    m: Measurement, profile: PerformanceProfile, request: DeploymentRequest, rate: float, limit: int
) -> Option | None:
    """The aggregated option of one candidate: by its replays when it has any, else by the tables."""
    if m.replays:
        passed = [r for r in m.replays if replay_passes(request, m, r) and r.engines <= limit]
        if not passed:
            return None
        best = min(passed, key=lambda r: r.engines)
        return Option("agg", m.candidate, best.engines, None, 0, best.ttft_p50_ms, best.itl_p50_ms, best)
    return model_agg(m, profile, request, rate, limit)


def replay_rejection(request: DeploymentRequest, m: Measurement, limit: int) -> str | None:
    """Why a replayed candidate is ruled out (``None``: it is not, or it was not replayed)."""
    if not m.replays or any(replay_passes(request, m, r) and r.engines <= limit for r in m.replays):
        return None
    b = m.candidate.batch
    runs = "; ".join(
        f"{r.describe()}; slots held {slot_hold_s(request, r):.2f} s, "
        f"{slot_tail(request, b, r):.0%} would wait past the TTFT budget, "
        f"{slot_rate(request, b, r):.2g} req/s per engine would keep that within {1 - ATTAINMENT_GOAL:.0%}"
        for r in m.replays
    )
    return (
        f"{m.candidate.label}: the replayed workload does not hold {ATTAINMENT_GOAL:.0%} within the SLA "
        f"({runs})"
    )


def replay_spec(request: DeploymentRequest, backend: str) -> ReplaySpec | None:
    """How the sweep replays a candidate: from the engines the tables' model asks for (or the
    whole budget when it finds none) up; ``None`` without a request rate."""
    rate = request.request_rate
    if rate is None:
        return None
    limit = gpu_budget(request) or MAX_ENGINES

    def first(m: Measurement) -> int:
        option = model_agg(m, m.profile(backend), request, rate, limit)
        return option.decode_replicas if option is not None else limit

    def passes(m: Measurement, r: Replay) -> bool:
        return replay_passes(request, m, r)

    return ReplaySpec(rate, limit, first, passes)


def model_agg(
    m: Measurement, profile: PerformanceProfile, request: DeploymentRequest, rate: float, limit: int
) -> Option | None:
    """The aggregated option by the tables' queueing model alone."""
    assert profile.prefill is not None
    alone = profile.prefill.ttft(request.isl)
    context = request.isl + request.osl / 2
    for n in range(1, limit + 1):
        per_engine = rate / n
        rho = per_engine * alone / 1000
        if rho >= MAX_UTILIZATION:
            continue
        ttft = queueing_ttft(alone, rho)
        itl, conc = _decode_itl(profile, per_engine, request.osl, context, 1 / (1 - rho))
        if conc > m.candidate.batch:
            continue
        if ttft <= request.ttft_ms and itl <= request.itl_ms:
            return Option("agg", m.candidate, n, None, 0, ttft, itl)
    return None


def size_disagg(
    pm: Measurement,
    pp: PerformanceProfile,
    dm: Measurement,
    dp: PerformanceProfile,
    request: DeploymentRequest,
    rate: float,
) -> Option | None:
    assert pp.prefill is not None and dp.decode is not None
    p = prefill_demand(
        pp.prefill, rate=rate, isl=request.isl, ttft_target_ms=request.ttft_ms, gpus_per_engine=1
    )
    d = decode_demand(
        dp.decode,
        rate=rate,
        isl=request.isl,
        osl=request.osl,
        itl_target_ms=request.itl_ms,
        gpus_per_engine=1,
    )
    if math.isinf(p) or math.isinf(d):
        return None
    n_p, n_d = max(1, math.ceil(p - 1e-9)), max(1, math.ceil(d - 1e-9))
    engine_rate = pp.prefill.throughput_per_gpu(request.isl)
    ttft = queueing_ttft(pp.prefill.ttft(request.isl), rate * request.isl / (engine_rate * n_p))
    itl, _ = _decode_itl(dp, rate / n_d, request.osl, request.isl + request.osl / 2, 1.0)
    return Option("disagg", dm.candidate, n_d, pm.candidate, n_p, ttft, itl)


def load_rate(request: DeploymentRequest, profiles: list[PerformanceProfile]) -> float | None:
    """Requests per second to size for (``None``: no load stated)."""
    if request.request_rate is not None:
        return request.request_rate
    if request.concurrency is None:
        return None
    fastest = min(
        p.prefill.ttft(request.isl) + request.osl * p.decode.itl(1, request.isl + request.osl / 2)
        for p in profiles
        if p.prefill is not None and p.decode is not None
    )
    return request.concurrency / (fastest / 1000)


def gpu_budget(request: DeploymentRequest) -> int | None:
    """``hardware.totalGpus``, else ``features.planner.max_gpu_budget`` (when positive), else none."""
    if request.total_gpus:
        return request.total_gpus
    budget = (request.planner or {}).get("max_gpu_budget")
    if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
        return budget
    return None


def _merged(prefill: PerformanceProfile, decode: PerformanceProfile, backend: str) -> PerformanceProfile:
    return PerformanceProfile(backend, prefill.prefill, decode.decode)


def select(request: DeploymentRequest, measurements: list[Measurement], backend: str) -> Selection:
    """The smallest graph of the measured candidates that meets the request's SLA."""
    if not measurements:
        raise SelectionError("nothing was measured")
    profiles = [m.profile(backend) for m in measurements]
    rate = load_rate(request, profiles)
    limit = gpu_budget(request) or MAX_ENGINES
    context = request.isl + request.osl / 2
    options: list[tuple[Option, PerformanceProfile]] = []
    rejected = [
        why
        for m in measurements
        if rate is not None and (why := replay_rejection(request, m, limit)) is not None
    ]
    if rate is None:
        for m, p in zip(measurements, profiles, strict=True):
            assert p.prefill is not None and p.decode is not None
            ttft, itl = p.prefill.ttft(request.isl), p.decode.itl(1, context)
            if ttft <= request.ttft_ms and itl <= request.itl_ms:
                options.append((Option("agg", m.candidate, 1, None, 0, ttft, itl), p))
    else:
        for m, p in zip(measurements, profiles, strict=True):
            agg = size_agg(m, p, request, rate, limit)
            if agg is not None:
                options.append((agg, p))
        for pm, pp in zip(measurements, profiles, strict=True):
            for dm, dp in zip(measurements, profiles, strict=True):
                dis = size_disagg(pm, pp, dm, dp, request, rate)
                if dis is not None and dis.gpus <= limit:
                    options.append((dis, _merged(pp, dp, backend)))
    if not options:
        raise SelectionError("; ".join([_closest(request, measurements, profiles, rate, limit), *rejected]))

    def key(item: tuple[Option, PerformanceProfile]) -> tuple[float, ...]:
        o = item[0]
        if request.optimization == "latency":
            return (o.latency_ms(request.osl), o.gpus)
        return (o.gpus, 0 if o.mode == "agg" else 1, o.itl_ms)

    options.sort(key=key)
    best, profile = options[0]
    load = (
        "no load stated: one engine (a planner sizes it at run time)" if rate is None else f"{rate:.3g} req/s"
    )
    reason = (
        f"{best.mode}, {best.gpus} engine(s): the {'lowest latency' if request.optimization == 'latency' else 'fewest GPUs'} "
        f"of {len(options)} feasible option(s) for TTFT <= {request.ttft_ms:g} ms and ITL <= {request.itl_ms:g} ms "
        f"at ISL {request.isl} / OSL {request.osl}, {load}"
    )
    if best.replay is not None:
        reason += f"; replayed: {best.replay.describe()}"
    elif best.mode == "disagg" and any(m.replays for m in measurements):
        reason += " (disaggregated: sized from the tables, not replayed)"
    return Selection(best, profile, rate, reason, [o for o, _ in options[1:]], rejected)


def _closest(
    request: DeploymentRequest,
    measurements: list[Measurement],
    profiles: list[PerformanceProfile],
    rate: float | None,
    limit: int,
) -> str:
    context = request.isl + request.osl / 2
    ttft = min(p.prefill.ttft(request.isl) for p in profiles if p.prefill is not None)
    itl = min(p.decode.itl(1, context) for p in profiles if p.decode is not None)
    words = [
        f"no measured configuration ({', '.join(m.candidate.label for m in measurements)}) meets "
        f"TTFT <= {request.ttft_ms:g} ms and ITL <= {request.itl_ms:g} ms"
    ]
    if ttft > request.ttft_ms:
        words.append(f"a lone {request.isl}-token prompt already takes {ttft:.1f} ms to its first token")
    if itl > request.itl_ms:
        words.append(f"a lone stream already decodes at {itl:.2f} ms per token (context {context:g})")
    if ttft <= request.ttft_ms and itl <= request.itl_ms and rate is not None:
        words.append(f"{rate:.3g} req/s needs more than {limit} engines")
    return "; ".join(words)
