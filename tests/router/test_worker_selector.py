"""WorkerSelector: the cost function, temperature, busy thresholds."""

import math
import random
from collections import Counter

import pytest

from dynamo.router.selector import (
    AllWorkersBusy,
    NoWorkers,
    SelectorConfig,
    WorkerSelector,
    softmax_sample,
)
from dynamo.router.worker_key import worker_key

BS = 16


class Load:
    def __init__(self, blocks: dict[int, int] | None = None, prefill: dict[int, int] | None = None) -> None:
        self.blocks = blocks or {}
        self.prefill = prefill or {}

    def active_blocks(self, worker: int) -> int:
        return self.blocks.get(worker, 0)

    def prefill_tokens(self, worker: int) -> int:
        return self.prefill.get(worker, 0)


def selector(seed: int = 0, **kw: float | int | None) -> WorkerSelector:
    return WorkerSelector(SelectorConfig(block_size=BS, **kw), random.Random(seed))  # type: ignore[arg-type]


def test_logit_is_weighted_prefill_plus_decode() -> None:
    load = Load(blocks={1: 30}, prefill={1: 64})
    sel = selector(overlap_weight=2.0).select([1], 10 * BS + 3, {1: 4}, load, {})
    assert sel.request_blocks == 11
    assert sel.overlap_blocks == 4
    assert sel.prefill_cost == (11 - 4) + 64 / BS
    assert sel.decode_cost == 30 + 11
    assert sel.logit == 2.0 * sel.prefill_cost + sel.decode_cost


def test_temperature_zero_picks_the_minimum() -> None:
    # Worker 2 has the best overlap; worker 3 is idle but cold; worker 1 is loaded.
    load = Load(blocks={1: 50, 2: 5, 3: 0})  # logits: 62, 17, 20
    overlaps = {1: 8, 2: 8}
    for seed in range(20):
        assert selector(seed).select([1, 2, 3], 10 * BS, overlaps, load, {}).worker == 2
    # Without the cache term the idle worker wins.
    assert selector(overlap_weight=0.0).select([1, 2, 3], 10 * BS, overlaps, load, {}).worker == 3


def test_ties_are_broken_at_random_among_equals_only() -> None:
    load = Load(blocks={1: 5, 2: 5, 3: 6})
    sel = selector(seed=3)
    picks = Counter(sel.select([1, 2, 3], 4 * BS, {}, load, {}).worker for _ in range(400))
    assert set(picks) == {1, 2}
    assert min(picks.values()) > 120


def test_positive_temperature_samples_the_softmax_of_normalised_logits() -> None:
    load = Load(blocks={1: 0, 2: 10, 3: 20})  # logits (prompt of 4 blocks): 8, 18, 28
    temperature = 0.5
    logits = [8.0, 18.0, 28.0]
    weights = [math.exp(-(v - 8.0) / (20.0 * temperature)) for v in logits]
    expected = [w / sum(weights) for w in weights]
    sel = selector(seed=42, temperature=temperature)
    n = 20000
    picks = Counter(sel.select([1, 2, 3], 4 * BS, {}, load, {}).worker for _ in range(n))
    for worker, p in zip([1, 2, 3], expected, strict=True):
        assert abs(picks[worker] / n - p) < 0.015, (worker, picks[worker] / n, p)


def test_softmax_sample_is_uniform_on_equal_logits_and_stays_in_range() -> None:
    assert [softmax_sample([3.0, 3.0, 3.0], 1.0, u) for u in (0.0, 0.34, 0.67, 0.999)] == [0, 1, 2, 2]
    assert softmax_sample([1.0, 2.0], 0.1, 0.0) == 0
    assert softmax_sample([1.0, 2.0], 0.1, 0.9999999) in (0, 1)


def test_decode_threshold_skips_busy_workers() -> None:
    load = Load(blocks={1: 90, 2: 10})
    sel = selector(active_decode_blocks_threshold=0.8)
    # Worker 1 caches the whole prompt but is at 90% of its 100 blocks.
    assert sel.select([1, 2], 100 * BS, {1: 100}, load, {1: 100, 2: 100}).worker == 2
    # Unknown capacity: no threshold, the cache wins (190 against 210).
    assert sel.select([1, 2], 100 * BS, {1: 100}, load, {}).worker == 1


def test_prefill_threshold_and_all_busy() -> None:
    load = Load(prefill={1: 5000, 2: 4097})
    sel = selector(active_prefill_tokens_threshold=4096)
    with pytest.raises(AllWorkersBusy) as busy:
        sel.select([1, 2], BS, {}, load, {})
    assert busy.value.workers == [1, 2]
    assert sel.select([1, 2, 3], BS, {}, load, {}).worker == 3


def test_pinned_worker_bypasses_choice_but_not_busy_check() -> None:
    load = Load(blocks={1: 0, 2: 99})
    sel = selector(active_decode_blocks_threshold=0.5)
    chosen = sel.select([1, 2], 4 * BS, {2: 3}, load, {}, pinned=2)
    assert chosen.worker == 2 and chosen.overlap_blocks == 3
    with pytest.raises(AllWorkersBusy):
        sel.select([1, 2], 4 * BS, {}, load, {2: 100}, pinned=2)


def test_no_candidates() -> None:
    with pytest.raises(NoWorkers):
        selector().select([], BS, {}, Load(), {})


def test_selection_splits_its_worker_key() -> None:
    key = worker_key(0xABC, 3)
    chosen = selector().select([key], BS, {}, Load(), {})
    assert (chosen.instance_id, chosen.dp_rank) == (0xABC, 3)
