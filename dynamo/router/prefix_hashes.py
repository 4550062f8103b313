"""Block-hash reuse for known prefixes: a prompt's chained block hashes, computed once per shared prefix.

Journey: route -> ``KvRouter.select`` -> **here (the prompt's sequence hashes)** -> indexer and load
view. Prompts that share a long prefix (a system prompt, a tool list, a chat's earlier turns) share
the chained hashes of its blocks; hashing them again costs two Python-level XXH3 calls per block
(at 32k tokens, about a fifth of the frontend's CPU in a KV-routed profile:
``benchmarks/results/profiles/``).

``PrefixHasher.sequence_hashes`` reads the prompt's full blocks once as bytes and runs one streaming
XXH3-128 over them (C speed); its digest after every ``checkpoint_blocks`` blocks keys a memo of the
chained hashes up to there. The longest remembered checkpoint gives the prompt's leading hashes, and
only the blocks after it are hashed one by one. The result always equals
``compute_sequence_hashes(compute_block_hashes(tokens, block_size, lora_name))`` (a test checks it;
the memo key is a 128-bit digest of the exact bytes hashed). Memory: at most ``max_checkpoints``
keys, each holding its prompt's hashes (shared by the prompt's keys; 8 bytes per block).
Not thread-safe: the router's event loop owns it.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Sequence

import xxhash

from dynamo.llm.kv_events import HASH_SEED, compute_block_hashes, compute_sequence_hashes
from dynamo.llm.token_ids import as_token_ids

DEFAULT_CHECKPOINT_BLOCKS = 32
DEFAULT_MAX_CHECKPOINTS = 8192


class PrefixHasher:
    """``compute_sequence_hashes(compute_block_hashes(...))`` with the hashes of known prefixes reused."""

    def __init__(
        self,
        block_size: int,
        checkpoint_blocks: int = DEFAULT_CHECKPOINT_BLOCKS,
        max_checkpoints: int = DEFAULT_MAX_CHECKPOINTS,
    ) -> None:
        if block_size <= 0 or checkpoint_blocks <= 0 or max_checkpoints <= 0:
            raise ValueError("block_size, checkpoint_blocks and max_checkpoints must be positive")
        self.block_size = block_size
        self.checkpoint_blocks = checkpoint_blocks
        self.max_checkpoints = max_checkpoints
        self._memo: OrderedDict[tuple[int, int], tuple[int, ...]] = OrderedDict()
        self.reused_blocks = 0  # blocks whose hashes came from the memo (since start)
        self.hashed_blocks = 0  # blocks hashed one by one

    def sequence_hashes(self, tokens: Sequence[int], lora_name: str | None = None) -> list[int]:
        """The chained hashes of ``tokens``' full blocks."""
        bs, cb = self.block_size, self.checkpoint_blocks
        n_full = len(tokens) // bs
        if n_full < cb or sys.byteorder != "little":
            self.hashed_blocks += n_full
            return compute_sequence_hashes(compute_block_hashes(tokens, bs, lora_name))
        salt = lora_name.encode() if lora_name else b""
        raw = memoryview(as_token_ids(tokens[: n_full * bs])).cast("B")
        step = bs * 4
        # One streaming digest over the blocks (salted like the local hashes), read at each checkpoint.
        stream = xxhash.xxh3_128(salt)
        keys: list[tuple[int, int]] = []
        for k in range(cb, n_full + 1, cb):
            stream.update(raw[(k - cb) * step : k * step])
            keys.append((k, stream.intdigest()))
        memo = self._memo
        start = 0
        prefix: tuple[int, ...] = ()
        for key in reversed(keys):
            known = memo.get(key)
            if known is not None:
                memo.move_to_end(key)
                start = key[0]
                prefix = known[:start]
                break
        h = xxhash.xxh3_64_intdigest
        if salt:
            local = [
                h(bytes(raw[i * step : (i + 1) * step]) + salt, seed=HASH_SEED) for i in range(start, n_full)
            ]
        else:
            local = [h(raw[i * step : (i + 1) * step], seed=HASH_SEED) for i in range(start, n_full)]
        if prefix:
            seq = [*prefix, *compute_sequence_hashes([prefix[-1], *local])[1:]]
        else:
            seq = compute_sequence_hashes(local)
        self.reused_blocks += start
        self.hashed_blocks += n_full - start
        frozen = tuple(seq)
        for key in keys:
            if key not in memo:  # those past ``start`` never are (else the longest hit was later)
                memo[key] = frozen
        while len(memo) > self.max_checkpoints:
            memo.popitem(last=False)
        return seq
