"""Scaling policies: from an ``Observation`` (and forecasts) to what each worker pool should become.

- ``ThresholdPolicy`` (``throughput``, ``latency``, ``load``): reactive. Per pool, one step up when
  any ready worker is over the up threshold, one step down when every one is under the down
  threshold, else hold. Prefill: queued prompt tokens (waiting requests x mean ISL) against the
  context length (``throughput``: up at 1.0, down under 0.1; ``latency``: up at 0.1, down at 0) or
  against ``prefill_scale_{up,down}_queue_tokens`` (``load``). Decode: KV use, (active blocks +
  waiting requests' prompt blocks) / total blocks (``throughput``: up over 1.0, down under 0.6;
  ``latency``: up over 0.4, down under 0.1; ``load``: ``decode_scale_{up,down}_kv_rate`` percent).
- ``SlaPolicy`` (``sla``): predictive. Replicas from the predicted request rate (plus the backlog
  the workers report), ISL and OSL, the performance profile, and correction factors (observed /
  expected TTFT and ITL); the decode pool is also sized so that few requests wait for a free batch
  slot past the TTFT budget (Erlang C). See ``docs/planner.md`` for the arithmetic, which
  ``prefill_demand``, ``decode_demand`` and ``decode_slot_demand`` implement.

Contract: a policy returns one ``Proposal`` per pool; it never looks at what was published before
(the planner reconciles proposals with pending changes and bounds them).

Journey: observe -> predict -> **decide** -> bound -> publish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from dynamo.planner.config import PlannerConfig
from dynamo.planner.observation import Observation, Traffic
from dynamo.planner.predictors import LoadPredictor, create_predictor
from dynamo.planner.profile import DecodeProfile, PerformanceProfile, PrefillProfile

Direction = Literal["up", "down", "hold", "set"]

# Static thresholds of the throughput and latency targets (the reference's values).
PREFILL_THRESHOLDS = {"throughput": (1.0, 0.1), "latency": (0.1, 0.0)}  # queued tokens / context length
DECODE_THRESHOLDS = {"throughput": (1.0, 0.6), "latency": (0.4, 0.1)}  # KV use
CORRECTION_BOUNDS = (0.1, 10.0)
MAX_UTILIZATION = 0.95  # the queueing model is not used past this
SLOT_WAIT_TAIL = 0.05  # share of requests that may wait for a batch slot past the TTFT budget


@dataclass(frozen=True)
class Proposal:
    """What one pool should do: ``set`` to ``replicas``, or step ``up``/``down``, or ``hold``."""

    role: str
    direction: Direction
    replicas: int | None = None  # for ``set``
    reason: str = ""
    inputs: dict[str, float] = field(default_factory=dict)


class ThresholdPolicy:
    """The reactive targets: ``throughput``, ``latency`` and ``load``."""

    def __init__(self, config: PlannerConfig) -> None:
        self.config = config
        self._isl: float | None = None  # last observed mean ISL, to size queued prompts

    def propose(self, obs: Observation) -> list[Proposal]:
        if obs.traffic is not None and obs.traffic.isl is not None:
            self._isl = obs.traffic.isl
        return [self._prefill(obs) if role == "prefill" else self._decode(obs) for role in self.config.roles]

    def _prefill(self, obs: Observation) -> Proposal:
        loads = obs.loads_of("prefill")
        if not loads:
            return Proposal("prefill", "hold", reason="no load reports from prefill workers")
        isl = self._isl or 0.0
        queued = [w.waiting * isl for w in loads]
        target = self.config.optimization_target
        inputs = {"max_queued_tokens": max(queued), "mean_isl": isl, "workers_reporting": float(len(loads))}
        if target == "load":
            up = float(self.config.prefill_scale_up_queue_tokens or 0)
            down = float(self.config.prefill_scale_down_queue_tokens or 0)
            values, what = queued, "queued prompt tokens"
            if any(v >= up for v in values):
                return Proposal("prefill", "up", reason=f"{what} {max(values):.0f} >= {up:g}", inputs=inputs)
            if all(v <= down for v in values):
                return Proposal("prefill", "down", reason=f"{what} all <= {down:g}", inputs=inputs)
            return Proposal("prefill", "hold", reason=f"{what} between thresholds", inputs=inputs)
        ctx = obs.context_length
        if not ctx:
            return Proposal(
                "prefill", "hold", reason="context length unknown (no model card yet)", inputs=inputs
            )
        ratios = [q / ctx for q in queued]
        inputs["max_queue_ratio"] = max(ratios)
        up_r, down_r = PREFILL_THRESHOLDS[target]
        if any(r >= up_r for r in ratios):
            return Proposal(
                "prefill", "up", reason=f"queued/context {max(ratios):.3f} >= {up_r}", inputs=inputs
            )
        low = all(r <= down_r for r in ratios) if target == "latency" else all(r < down_r for r in ratios)
        if low:
            return Proposal("prefill", "down", reason=f"queued/context all under {down_r}", inputs=inputs)
        return Proposal("prefill", "hold", reason="queue between thresholds", inputs=inputs)

    def _decode(self, obs: Observation) -> Proposal:
        loads = [w for w in obs.loads_of("decode") if w.kv_total_blocks > 0]
        if not loads:
            return Proposal("decode", "hold", reason="no load reports from decode workers")
        prompt_blocks = math.ceil((self._isl or 0.0) / max(1, obs.block_size))
        utils = [(w.kv_active_blocks + w.waiting * prompt_blocks) / w.kv_total_blocks for w in loads]
        inputs = {
            "max_kv_use": max(utils),
            "min_kv_use": min(utils),
            "waiting": float(sum(w.waiting for w in loads)),
            "workers_reporting": float(len(loads)),
        }
        target = self.config.optimization_target
        if target == "load":
            up = (self.config.decode_scale_up_kv_rate or 0.0) / 100.0
            down = (self.config.decode_scale_down_kv_rate or 0.0) / 100.0
            if any(u >= up for u in utils):
                return Proposal("decode", "up", reason=f"KV use {max(utils):.0%} >= {up:.0%}", inputs=inputs)
            if all(u <= down for u in utils):
                return Proposal("decode", "down", reason=f"KV use all <= {down:.0%}", inputs=inputs)
            return Proposal("decode", "hold", reason="KV use between thresholds", inputs=inputs)
        up_u, down_u = DECODE_THRESHOLDS[target]
        if any(u > up_u for u in utils):
            return Proposal("decode", "up", reason=f"KV use {max(utils):.0%} > {up_u:.0%}", inputs=inputs)
        if all(u < down_u for u in utils):
            return Proposal("decode", "down", reason=f"KV use all < {down_u:.0%}", inputs=inputs)
        return Proposal("decode", "hold", reason="KV use between thresholds", inputs=inputs)


# --- the SLA arithmetic (pure functions, unit-tested by hand) -----------------------------------


def clamp_correction(value: float) -> float:
    lo, hi = CORRECTION_BOUNDS
    return min(hi, max(lo, value))


def max_utilization(service_ms: float, target_ms: float) -> float:
    """The utilization at which an engine's mean TTFT reaches ``target_ms``, when a prompt alone
    takes ``service_ms``: with the M/D/1 mean wait ``rho / (2 (1 - rho)) * service``, the wait may be
    ``a = (target - service) / service`` services, so ``rho = 2a / (1 + 2a)``. 0 when the prompt alone
    is over the target."""
    if service_ms >= target_ms:
        return 0.0
    a = (target_ms - service_ms) / service_ms
    return 2 * a / (1 + 2 * a)


def queueing_ttft(service_ms: float, utilization: float) -> float:
    """Mean TTFT (ms) at ``utilization`` by the same model: ``service * (1 + rho / (2 (1 - rho)))``."""
    rho = min(MAX_UTILIZATION, max(0.0, utilization))
    return service_ms * (1 + rho / (2 * (1 - rho)))


def prefill_demand(
    profile: PrefillProfile,
    *,
    rate: float,
    isl: float,
    ttft_target_ms: float,
    gpus_per_engine: int,
    correction: float = 1.0,
) -> float:
    """Prefill engines needed (fractional): prompt tokens per second x correction, over one engine's
    prompt throughput at ``isl`` x its utilization bound for the TTFT target. ``inf`` when a prompt
    alone is over the target."""
    rho = max_utilization(profile.ttft(isl), ttft_target_ms)
    if rho <= 0:
        return math.inf
    engine = profile.throughput_per_gpu(isl) * gpus_per_engine
    return rate * isl * correction / (engine * rho)


def decode_demand(
    profile: DecodeProfile,
    *,
    rate: float,
    isl: float,
    osl: float,
    itl_target_ms: float,
    gpus_per_engine: int,
    correction: float = 1.0,
) -> float:
    """Decode engines needed (fractional): output tokens per second over one engine's best throughput
    with ITL at ``itl_target / correction``, at context ``isl + osl / 2``. ``inf`` when no measured
    concurrency meets it."""
    engine = profile.throughput_per_gpu(itl_target_ms / correction, isl + osl / 2) * gpus_per_engine
    if engine <= 0:
        return math.inf
    return rate * osl / engine


def erlang_c(servers: int, offered: float) -> float:
    """Probability that a request waits for a slot (M/M/c, Erlang C): ``servers`` slots,
    ``offered`` load in slots (arrival rate x hold time). 1 when ``offered >= servers``."""
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return 1.0
    blocked = 1.0  # Erlang B by its recurrence B(k) = A B(k-1) / (k + A B(k-1)), stable for any c
    for k in range(1, servers + 1):
        blocked = offered * blocked / (k + offered * blocked)
    return servers * blocked / (servers - offered * (1 - blocked))


def slot_wait_tail(servers: int, offered: float, hold_s: float, wait_s: float) -> float:
    """Share of requests that wait longer than ``wait_s`` for a slot: ``C exp(-(c - A) t / S)``."""
    if offered >= servers:
        return 1.0
    return erlang_c(servers, offered) * math.exp(-(servers - offered) * max(0.0, wait_s) / hold_s)


def slot_mean_wait(servers: int, offered: float, hold_s: float) -> float:
    """Mean wait (s) for a slot: ``C S / (c - A)``; ``inf`` when the slots are saturated."""
    if offered >= servers:
        return math.inf
    return erlang_c(servers, offered) * hold_s / (servers - offered)


def slot_demand(
    rate: float, hold_s: float, slots_per_engine: int, wait_budget_s: float, tail: float = SLOT_WAIT_TAIL
) -> float:
    """Fewest engines of ``slots_per_engine`` slots each such that at most ``tail`` of the requests
    (``rate`` per second, each holding a slot ``hold_s``) wait longer than ``wait_budget_s``."""
    offered = rate * hold_s
    if offered <= 0:
        return 0.0
    engines = math.floor(offered / slots_per_engine) + 1  # the fewest with spare slots
    while slot_wait_tail(engines * slots_per_engine, offered, hold_s, wait_budget_s) > tail:
        engines += 1
    return float(engines)


def decode_slot_demand(
    profile: DecodeProfile,
    *,
    rate: float,
    isl: float,
    osl: float,
    itl_target_ms: float,
    wait_budget_ms: float,
    prefill_ms: float = 0.0,
    correction: float = 1.0,
) -> float:
    """Decode engines needed so that requests rarely wait for one of an engine's
    ``profile.batch_limit`` slots past ``wait_budget_ms`` (what is left of the TTFT target after
    the prefill). A request holds its slot ``prefill_ms`` (an aggregated engine prefills in its
    slot) plus OSL tokens at the ITL of the concurrency ``decode_demand`` runs engines at."""
    context = isl + osl / 2
    slots = profile.batch_limit
    concurrency = min(float(slots), max(1.0, profile.max_concurrency(itl_target_ms / correction, context)))
    hold_ms = prefill_ms + osl * profile.itl(concurrency, context) * correction
    return slot_demand(rate, hold_ms / 1000, slots, wait_budget_ms / 1000)


class SlaPolicy:
    """``optimization_target: sla``: predicted load through the profile, corrected by what clients saw."""

    def __init__(self, config: PlannerConfig, profile: PerformanceProfile) -> None:
        self.config = config
        self.profile = profile
        self.requests: LoadPredictor = create_predictor(config)
        self.isl: LoadPredictor = create_predictor(config)
        self.osl: LoadPredictor = create_predictor(config)
        self._p_corr = self._d_corr = 1.0
        needs_prefill = "prefill" in config.roles or config.mode == "agg"
        if needs_prefill and profile.prefill is None:
            raise ValueError("the performance profile has no prefill table, which this mode needs")
        if "decode" in config.roles and profile.decode is None:
            raise ValueError("the performance profile has no decode table, which this mode needs")

    def corrections(self, traffic: Traffic, ready: dict[str, int]) -> tuple[float, float]:
        """(prefill, decode) correction factors: observed / expected TTFT and ITL over the interval.
        The expected TTFT counts the queueing the model predicts (M/D/1 for the prompt, Erlang C for
        a decode slot); an interval whose engines or slots were saturated says nothing about the
        engines' speed (its TTFT is the backlog's, which the backlog term answers), so the previous
        factor is kept, as it is when there is nothing to compare (1.0 at first)."""
        if traffic.requests <= 0 or traffic.isl is None:
            return self._p_corr, self._d_corr
        rate = traffic.rate
        decode_ready = ready.get("decode", 0)
        slot_wait_ms = 0.0
        if self.profile.decode is not None and decode_ready and traffic.duration_s:
            wait = slot_mean_wait(
                decode_ready * self.profile.decode.batch_limit, rate * traffic.duration_s, traffic.duration_s
            )
            slot_wait_ms = wait * 1000
        if self.profile.prefill is not None and traffic.ttft_s is not None:
            pool = ready.get("prefill") if self.config.mode != "agg" else ready.get("decode")
            engine = self.profile.prefill.throughput_per_gpu(traffic.isl) * self.config.gpus("prefill")
            rho = rate * traffic.isl / (engine * pool) if pool else math.inf
            if rho < MAX_UTILIZATION and math.isfinite(slot_wait_ms):
                expected = queueing_ttft(self.profile.prefill.ttft(traffic.isl), rho) + slot_wait_ms
                self._p_corr = clamp_correction(traffic.ttft_s * 1000 / expected)
        if (
            self.profile.decode is not None
            and traffic.itl_s is not None
            and traffic.osl is not None
            and decode_ready
        ):
            duration = traffic.duration_s or 0.0
            concurrency = rate * duration / decode_ready
            expected_itl = self.profile.decode.itl(max(1.0, concurrency), traffic.isl + traffic.osl / 2)
            self._d_corr = clamp_correction(traffic.itl_s * 1000 / expected_itl)
        return self._p_corr, self._d_corr

    def propose(self, obs: Observation) -> list[Proposal]:
        traffic = obs.traffic
        if traffic is None:
            return [Proposal(role, "hold", reason="no traffic observed yet") for role in self.config.roles]
        self.requests.add(traffic.requests)
        if traffic.requests > 0 and traffic.isl is not None and traffic.osl is not None:
            self.isl.add(traffic.isl)
            self.osl.add(traffic.osl)
        requests = self.requests.predict() or 0.0
        isl, osl = self.isl.predict(), self.osl.predict()
        p_corr, d_corr = self.corrections(traffic, obs.ready)
        interval = self.config.interval
        agg = self.config.mode == "agg"
        # Requests the workers hold waiting are served on top of the forecast, within one interval.
        prefill_backlog = sum(w.waiting for w in obs.loads_of("decode" if agg else "prefill"))
        decode_backlog = 0 if agg else sum(w.waiting for w in obs.loads_of("decode"))
        rate = requests / interval
        inputs = {
            "observed_requests": traffic.requests,
            "observed_isl": traffic.isl or 0.0,
            "observed_osl": traffic.osl or 0.0,
            "observed_ttft_ms": (traffic.ttft_s or 0.0) * 1000,
            "observed_itl_ms": (traffic.itl_s or 0.0) * 1000,
            "predicted_requests": requests,
            "predicted_isl": isl or 0.0,
            "predicted_osl": osl or 0.0,
            "waiting_requests": float(prefill_backlog + decode_backlog),
            "prefill_correction": p_corr,
            "decode_correction": d_corr,
        }
        if (rate <= 0 and not prefill_backlog and not decode_backlog) or isl is None or osl is None:
            return [
                Proposal(role, "set", self.config.min_endpoint, "no requests predicted", inputs)
                for role in self.config.roles
            ]
        p_rate = rate + prefill_backlog / interval
        d_rate = rate + (prefill_backlog if agg else decode_backlog) / interval
        p_need = d_need = slot_need = 0.0
        prefill_ms = 0.0
        if self.profile.prefill is not None and (agg or "prefill" in self.config.roles):
            p_need = prefill_demand(
                self.profile.prefill,
                rate=p_rate,
                isl=isl,
                ttft_target_ms=self.config.ttft_ms,
                gpus_per_engine=self.config.gpus("decode" if agg else "prefill"),
                correction=p_corr,
            )
            prefill_ms = self.profile.prefill.ttft(isl) * p_corr
        if self.profile.decode is not None and "decode" in self.config.roles:
            d_need = decode_demand(
                self.profile.decode,
                rate=d_rate,
                isl=isl,
                osl=osl,
                itl_target_ms=self.config.itl_ms,
                gpus_per_engine=self.config.gpus("decode"),
                correction=d_corr,
            )
            slot_need = decode_slot_demand(
                self.profile.decode,
                rate=d_rate,
                isl=isl,
                osl=osl,
                itl_target_ms=self.config.itl_ms,
                wait_budget_ms=self.config.ttft_ms - prefill_ms,
                prefill_ms=prefill_ms if agg else 0.0,
                correction=d_corr,
            )
        inputs |= {
            "prefill_engines_needed": p_need,
            "decode_engines_needed": d_need,
            "decode_slot_engines_needed": slot_need,
        }
        out = []
        for role in self.config.roles:
            if agg:
                need = max(p_need + d_need, slot_need)
            else:
                need = p_need if role == "prefill" else max(d_need, slot_need)
            if math.isinf(need):
                out.append(Proposal(role, "set", None, "the profile cannot meet the SLA at any size", inputs))
            else:
                out.append(
                    Proposal(role, "set", math.ceil(need - 1e-9), f"{need:.2f} engines needed", inputs)
                )
        return out
