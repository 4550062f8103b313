"""A backend's performance profile, as the SLA target reads it and the profiler writes it.

File (JSON, ``planner_profile.json`` in ``profile_results_dir``)::

    {"format": "dynamo-planner-profile/1", "backend": "mocker",
     "prefill": {"engine_num_gpu": 1, "points": [{"isl": 128, "ttft_ms": 12.5}, ...]},
     "decode":  {"engine_num_gpu": 1,
                 "points": [{"context": 512, "concurrency": 8, "itl_ms": 6.0}, ...]}}

``prefill.points``: time to first token of one request alone on an engine, by prompt length.
``decode.points``: inter-token latency of an engine running ``concurrency`` streams whose KV holds
``context`` tokens each. An aggregated engine has both tables (measured on the same engine).

Contract: values between measured points are interpolated linearly (in ISL; in concurrency, then in
context); beyond the ends the end segment is extended (one point: proportional to ISL, constant in
concurrency). Throughputs are per GPU: an engine's rate divided by its ``engine_num_gpu``.

Journey: the planner's decide step (``optimization_target: sla``); written by the profiler.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "dynamo-planner-profile/1"


class ProfileError(ValueError):
    """A profile file that cannot be used; the message says why."""


def _lerp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear through sorted ``xs``, the end segments extended."""
    if len(xs) == 1:
        return ys[0]
    i = 1
    while i < len(xs) - 1 and x > xs[i]:
        i += 1
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass(frozen=True)
class PrefillProfile:
    """TTFT of a lone request by ISL on one engine of ``engine_num_gpu`` GPUs."""

    engine_num_gpu: int
    isl: tuple[float, ...]
    ttft_ms: tuple[float, ...]

    def ttft(self, isl: float) -> float:
        """Expected TTFT (ms) of a prompt of ``isl`` tokens."""
        if len(self.isl) == 1:
            return self.ttft_ms[0] * isl / self.isl[0]
        return max(1e-6, _lerp(self.isl, self.ttft_ms, isl))

    def throughput_per_gpu(self, isl: float) -> float:
        """Prompt tokens per second per GPU at ``isl``: ``isl / ttft / engine_num_gpu``."""
        return isl / (self.ttft(isl) / 1000.0) / self.engine_num_gpu


@dataclass(frozen=True)
class DecodeProfile:
    """ITL by (context, concurrency) on one engine of ``engine_num_gpu`` GPUs."""

    engine_num_gpu: int
    contexts: tuple[float, ...]  # sorted
    table: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]  # per context: (concurrencies, itl_ms)

    def _per_context(self, context: float, value_at: Any) -> float:
        values = [value_at(conc, itl) for conc, itl in self.table]
        return max(0.0, _lerp(self.contexts, values, context))

    def itl(self, concurrency: float, context: float) -> float:
        """Expected ITL (ms) of ``concurrency`` streams with ``context`` tokens each."""
        return max(1e-6, self._per_context(context, lambda conc, itl: _lerp(conc, itl, concurrency)))

    def max_concurrency(self, itl_target_ms: float, context: float) -> float:
        """The most streams one engine holds with ITL at or under ``itl_target_ms`` (0 when even
        the least measured concurrency is over it)."""

        def at_context(conc: tuple[float, ...], itl: tuple[float, ...]) -> float:
            if itl[0] > itl_target_ms:
                return 0.0
            best = conc[0]
            for i in range(1, len(conc)):
                if itl[i] <= itl_target_ms:
                    best = conc[i]
                    continue
                # crossing between i-1 and i
                best = conc[i - 1] + (conc[i] - conc[i - 1]) * (itl_target_ms - itl[i - 1]) / (
                    itl[i] - itl[i - 1]
                )
                break
            return best

        return self._per_context(context, at_context)

    @property
    def batch_limit(self) -> int:
        """The most streams one engine was measured with, taken as its batch limit: a stream beyond
        it waits for a free slot (profile up to the engine's ``max_num_seqs``)."""
        return max(1, int(max(max(conc) for conc, _ in self.table)))

    def throughput_per_gpu(self, itl_target_ms: float, context: float) -> float:
        """Output tokens per second per GPU at the largest concurrency that meets the ITL target."""
        conc = self.max_concurrency(itl_target_ms, context)
        if conc <= 0:
            return 0.0
        return conc / (self.itl(conc, context) / 1000.0) / self.engine_num_gpu


@dataclass(frozen=True)
class PerformanceProfile:
    """One backend's prefill and decode tables (either may be absent for a one-pool graph)."""

    backend: str | None
    prefill: PrefillProfile | None
    decode: DecodeProfile | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "backend": self.backend}
        if self.prefill is not None:
            out["prefill"] = {
                "engine_num_gpu": self.prefill.engine_num_gpu,
                "points": [
                    {"isl": i, "ttft_ms": t}
                    for i, t in zip(self.prefill.isl, self.prefill.ttft_ms, strict=True)
                ],
            }
        if self.decode is not None:
            points = [
                {"context": ctx, "concurrency": c, "itl_ms": i}
                for ctx, (concs, itls) in zip(self.decode.contexts, self.decode.table, strict=True)
                for c, i in zip(concs, itls, strict=True)
            ]
            out["decode"] = {"engine_num_gpu": self.decode.engine_num_gpu, "points": points}
        return out


def _positive(point: dict[str, Any], key: str, where: str) -> float:
    value = point.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ProfileError(f"{where}.{key} must be a positive number, got {value!r}")
    return float(value)


def _engine_gpus(section: dict[str, Any], where: str) -> int:
    value = section.get("engine_num_gpu", 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ProfileError(f"{where}.engine_num_gpu must be a whole number >= 1")
    return value


def parse_profile(data: Any) -> PerformanceProfile:
    """Validate a decoded profile document."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ProfileError(f'a profile is an object with "format": "{FORMAT}"')
    prefill = decode = None
    if data.get("prefill") is not None:
        section = data["prefill"]
        points = sorted(
            (
                (_positive(p, "isl", f"prefill.points[{i}]"), _positive(p, "ttft_ms", f"prefill.points[{i}]"))
                for i, p in enumerate(section.get("points") or [])
            ),
        )
        if not points:
            raise ProfileError("prefill.points is empty")
        if len({p[0] for p in points}) != len(points):
            raise ProfileError("prefill.points has two points with the same isl")
        prefill = PrefillProfile(
            _engine_gpus(section, "prefill"), tuple(p[0] for p in points), tuple(p[1] for p in points)
        )
    if data.get("decode") is not None:
        section = data["decode"]
        by_context: dict[float, dict[float, float]] = {}
        for i, p in enumerate(section.get("points") or []):
            where = f"decode.points[{i}]"
            ctx, conc, itl = (_positive(p, k, where) for k in ("context", "concurrency", "itl_ms"))
            if conc in by_context.setdefault(ctx, {}):
                raise ProfileError(f"{where}: a second point for context {ctx:g}, concurrency {conc:g}")
            by_context[ctx][conc] = itl
        if not by_context:
            raise ProfileError("decode.points is empty")
        contexts = tuple(sorted(by_context))
        table = tuple(
            (tuple(sorted(by_context[c])), tuple(by_context[c][k] for k in sorted(by_context[c])))
            for c in contexts
        )
        decode = DecodeProfile(_engine_gpus(section, "decode"), contexts, table)
    if prefill is None and decode is None:
        raise ProfileError("a profile needs a prefill or a decode table")
    backend = data.get("backend")
    return PerformanceProfile(str(backend) if backend is not None else None, prefill, decode)


def load_profile(path: Path) -> PerformanceProfile:
    """Read and validate a profile file (``ProfileError`` naming the file on any problem)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read the performance profile {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not JSON: {exc}") from None
    try:
        return parse_profile(data)
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from None


def write_profile(path: Path, profile: PerformanceProfile) -> None:
    """Write ``profile`` where the planner reads it (the profiler's output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.to_json(), indent=2) + "\n")
