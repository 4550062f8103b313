"""Block-hash reuse gives exactly the hashes of a fresh computation, reuses shared prefixes, and is bounded."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo.llm.kv_events import compute_block_hashes, compute_sequence_hashes
from dynamo.llm.token_ids import as_token_ids
from dynamo.router.prefix_hashes import PrefixHasher

TOKENS = st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=300)


def plain(tokens: list[int], block_size: int, lora: str | None = None) -> list[int]:
    return compute_sequence_hashes(compute_block_hashes(tokens, block_size, lora))


@settings(max_examples=300, deadline=None)
@given(
    prefixes=st.lists(TOKENS, min_size=1, max_size=3),
    tails=st.lists(TOKENS, min_size=1, max_size=6),
    block_size=st.sampled_from([1, 2, 4, 16]),
    checkpoint=st.sampled_from([1, 2, 3, 8]),
    lora=st.sampled_from([None, "adapter-a"]),
    seed=st.integers(0, 1000),
)
def test_hashes_equal_a_fresh_computation_whatever_was_seen_before(
    prefixes: list[list[int]],
    tails: list[list[int]],
    block_size: int,
    checkpoint: int,
    lora: str | None,
    seed: int,
) -> None:
    hasher = PrefixHasher(block_size, checkpoint_blocks=checkpoint, max_checkpoints=7)
    engine = PrefixHasher(block_size, checkpoint_blocks=checkpoint, max_checkpoints=7, keep_local=True)
    rng = random.Random(seed)
    for tail in tails:  # prompts sharing prefixes (ending anywhere in a block), in random order
        prompt = rng.choice(prefixes) + tail
        assert hasher.sequence_hashes(prompt, lora) == plain(prompt, block_size, lora)
        assert hasher.sequence_hashes(prompt) == plain(prompt, block_size)  # the salt keys the memo too
        ids = as_token_ids(prompt)  # as a worker receives them
        local = compute_block_hashes(prompt, block_size, lora)
        assert engine.block_hashes(ids, lora) == (local, compute_sequence_hashes(local))
        assert engine.sequence_hashes(ids, lora) == plain(prompt, block_size, lora)
    assert len(hasher._memo) <= 7 and len(engine._memo) <= 7


def test_local_hashes_need_a_hasher_that_keeps_them() -> None:
    with pytest.raises(ValueError, match="keep_local"):
        PrefixHasher(16).block_hashes([1] * 64)


def test_a_shared_prefix_is_hashed_once() -> None:
    rng = random.Random(5)
    system = [rng.randrange(49152) for _ in range(6000)]  # 375 blocks of 16
    hasher = PrefixHasher(16, checkpoint_blocks=32)
    first = system + [1, 2, 3] * 20
    assert hasher.sequence_hashes(first) == plain(first, 16)
    assert hasher.reused_blocks == 0
    second = system + [7, 8, 9] * 20
    assert hasher.sequence_hashes(second) == plain(second, 16)
    assert hasher.reused_blocks == 352  # the last checkpoint within the 375 shared blocks
    assert hasher.hashed_blocks == 378 + (378 - 352)
    engine = PrefixHasher(16, checkpoint_blocks=32, keep_local=True)
    engine.block_hashes(first)
    local, seq = engine.block_hashes(second)
    assert engine.reused_blocks == 352 and (local, seq) == (
        compute_block_hashes(second, 16),
        plain(second, 16),
    )
