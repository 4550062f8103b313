"""Choosing the worker for a request from its cache overlap and the workers' predicted load.

Journey: route. For every candidate worker, with B the request's blocks (ceil(prompt tokens /
block size)) and O the leading blocks the worker already caches::

    prefill_cost = (B - O) + queued prefill tokens / block_size
    decode_cost  = active blocks + the request's blocks not already active there
    logit        = overlap_weight * prefill_cost + decode_cost       (lower is better)

A block the worker's active requests already hold (the same chained hash: a shared system prompt)
is not counted twice, as in the reference; without the prompt's hashes all B blocks count.

Temperature 0 takes the lowest logit (exact ties broken at random); temperature T > 0 samples
``softmax(-(logit - min) / ((max - min) * T))``, so T is independent of the logits' scale.
A worker above a busy threshold (active blocks > fraction of its total KV blocks, or queued prefill
tokens > a token count) is not considered; when every candidate is busy, ``AllWorkersBusy`` lets
the caller queue or answer 429/529. Cost: O(candidates).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from dynamo.router.worker_key import format_worker_key, split_worker_key


class RoutingError(Exception):
    """No worker could be chosen for a request."""


class NoWorkers(RoutingError):
    """There is no candidate worker to route to."""

    def __init__(self) -> None:
        super().__init__("no workers available")


class AllWorkersBusy(RoutingError):
    """Every candidate is above a busy threshold; the caller should queue the request or shed it."""

    def __init__(self, workers: Sequence[int]) -> None:
        super().__init__(f"all {len(workers)} workers busy")
        self.workers = list(workers)


class WorkerLoad(Protocol):
    """The predicted load the selector reads (``ActiveSequences`` provides it)."""

    def active_blocks(self, worker: int) -> int: ...

    def prefill_tokens(self, worker: int) -> int: ...

    def new_blocks(self, worker: int, sequence_hashes: Sequence[int]) -> int: ...


@dataclass(frozen=True, slots=True)
class Selection:
    """The chosen worker and the numbers that chose it."""

    worker: int  # worker key; ``instance_id``/``dp_rank`` split it
    overlap_blocks: int  # leading prompt blocks the worker caches
    request_blocks: int  # ceil(prompt tokens / block size)
    logit: float
    prefill_cost: float  # in blocks
    decode_cost: float  # in blocks

    @property
    def instance_id(self) -> int:
        """The worker instance to send the request to."""
        return split_worker_key(self.worker)[0]

    @property
    def dp_rank(self) -> int:
        """The data-parallel rank within that instance."""
        return split_worker_key(self.worker)[1]


@dataclass(slots=True)
class SelectorConfig:
    """Selection knobs, named after the frontend flags that set them."""

    block_size: int
    overlap_weight: float = 1.0  # --kv-overlap-score-weight
    temperature: float = 0.0  # --router-temperature
    active_decode_blocks_threshold: float | None = None  # --active-decode-blocks-threshold (fraction)
    active_prefill_tokens_threshold: int | None = None  # --active-prefill-tokens-threshold (tokens)


class WorkerSelector:
    """Scores candidates with the cost function above and picks one."""

    def __init__(self, config: SelectorConfig, rng: random.Random | None = None) -> None:
        if config.block_size <= 0:
            raise ValueError("block_size must be positive")
        if config.temperature < 0:
            raise ValueError("temperature must be >= 0")
        self.config = config
        self.rng = rng if rng is not None else random.Random()

    def is_busy(self, worker: int, load: WorkerLoad, total_blocks: int | None) -> bool:
        """Whether ``worker`` is above a busy threshold (a threshold with an unknown total is off)."""
        cfg = self.config
        if (
            cfg.active_decode_blocks_threshold is not None
            and total_blocks
            and load.active_blocks(worker) > cfg.active_decode_blocks_threshold * total_blocks
        ):
            return True
        return (
            cfg.active_prefill_tokens_threshold is not None
            and load.prefill_tokens(worker) > cfg.active_prefill_tokens_threshold
        )

    def select(
        self,
        candidates: Sequence[int],
        prompt_tokens: int,
        overlaps: Mapping[int, int],
        load: WorkerLoad,
        total_blocks: Mapping[int, int],
        pinned: int | None = None,
        sequence_hashes: Sequence[int] = (),
    ) -> Selection:
        """Pick a worker for a prompt of ``prompt_tokens`` tokens.

        ``overlaps``: cached leading blocks per worker (absent = 0); ``total_blocks``: KV capacity
        per worker (absent = unknown, no decode threshold). ``pinned`` bypasses the choice but not
        the busy check. ``sequence_hashes``: the prompt's full blocks (chained hashes), so blocks
        already active on a worker are not added to its decode cost again. Raises ``NoWorkers`` or
        ``AllWorkersBusy``.
        """
        cfg = self.config
        bs = cfg.block_size
        request_blocks = max(1, -(-prompt_tokens // bs))
        weight = cfg.overlap_weight
        check_busy = cfg.active_decode_blocks_threshold is not None or (
            cfg.active_prefill_tokens_threshold is not None
        )

        if pinned is not None:
            if check_busy and self.is_busy(pinned, load, total_blocks.get(pinned)):
                raise AllWorkersBusy([pinned])
            return self._score(
                pinned, request_blocks, overlaps.get(pinned, 0), load, weight, bs, sequence_hashes
            )
        if not candidates:
            raise NoWorkers()

        workers: list[int] = []
        logits: list[float] = []
        for worker in candidates:
            if check_busy and self.is_busy(worker, load, total_blocks.get(worker)):
                continue
            overlap = min(overlaps.get(worker, 0), request_blocks)
            prefill = (request_blocks - overlap) + load.prefill_tokens(worker) / bs
            decode = _decode_blocks(worker, request_blocks, load, sequence_hashes)
            workers.append(worker)
            logits.append(weight * prefill + decode)
        if not workers:
            raise AllWorkersBusy(candidates)

        if cfg.temperature == 0.0:
            index = argmin_random_tie(logits, self.rng)
        else:
            index = softmax_sample(logits, cfg.temperature, self.rng.random())
        chosen = workers[index]
        return self._score(chosen, request_blocks, overlaps.get(chosen, 0), load, weight, bs, sequence_hashes)

    @staticmethod
    def _score(
        worker: int,
        request_blocks: int,
        overlap: int,
        load: WorkerLoad,
        weight: float,
        bs: int,
        sequence_hashes: Sequence[int],
    ) -> Selection:
        overlap = min(overlap, request_blocks)
        prefill = (request_blocks - overlap) + load.prefill_tokens(worker) / bs
        decode = float(_decode_blocks(worker, request_blocks, load, sequence_hashes))
        return Selection(worker, overlap, request_blocks, weight * prefill + decode, prefill, decode)

    def __repr__(self) -> str:
        return f"WorkerSelector({self.config})"


def _decode_blocks(worker: int, request_blocks: int, load: WorkerLoad, sequence_hashes: Sequence[int]) -> int:
    """Active blocks of ``worker`` once the request is added (its blocks already active count once)."""
    if not sequence_hashes:
        return load.active_blocks(worker) + request_blocks
    added = load.new_blocks(worker, sequence_hashes) + max(0, request_blocks - len(sequence_hashes))
    return load.active_blocks(worker) + added


def argmin_random_tie(logits: Sequence[float], rng: random.Random) -> int:
    """Index of the smallest logit; among exactly equal minima, a uniformly random one."""
    best = min(logits)
    ties = [i for i, v in enumerate(logits) if v == best]
    return ties[0] if len(ties) == 1 else ties[rng.randrange(len(ties))]


def softmax_sample(logits: Sequence[float], temperature: float, u: float) -> int:
    """Index drawn with probability proportional to ``exp(-(l - min) / ((max - min) * temperature))``.

    ``u`` is a uniform sample in [0, 1). Equal logits give a uniform draw.
    """
    lo = min(logits)
    hi = max(logits)
    n = len(logits)
    if hi == lo:
        return min(int(u * n), n - 1)
    scale = 1.0 / ((hi - lo) * temperature)
    weights = [math.exp(-(v - lo) * scale) for v in logits]
    target = u * sum(weights)
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if target < acc:
            return i
    return n - 1


def describe(selection: Selection) -> str:
    """One log line's worth of a selection."""
    return (
        f"worker {format_worker_key(selection.worker)} overlap {selection.overlap_blocks}/"
        f"{selection.request_blocks} blocks logit {selection.logit:.2f} "
        f"(prefill {selection.prefill_cost:.2f}, decode {selection.decode_cost:.2f})"
    )
