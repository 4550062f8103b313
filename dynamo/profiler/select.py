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
  stretched by 1 / (1 - rho) for the steps spent on prefill, is within the ITL target.

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
from dynamo.planner.policy import MAX_UTILIZATION, decode_demand, prefill_demand, queueing_ttft
from dynamo.planner.profile import PerformanceProfile
from dynamo.profiler.engines import Candidate
from dynamo.profiler.sweep import Measurement

MAX_ENGINES = 64  # the most replicas sized without a GPU budget


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
    ttft_ms: float  # predicted at the stated load
    itl_ms: float

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
        return out


@dataclass(frozen=True)
class Selection:
    """The chosen option, the profile the planner gets, and why."""

    option: Option
    profile: PerformanceProfile
    rate: float | None
    reason: str
    alternatives: list[Option]


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


def size_agg(
    m: Measurement, profile: PerformanceProfile, request: DeploymentRequest, rate: float, limit: int
) -> Option | None:
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
        raise SelectionError(_closest(request, measurements, profiles, rate, limit))

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
    return Selection(best, profile, rate, reason, [o for o, _ in options[1:]])


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
