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
keys, each holding its prompt's hashes (shared by the prompt's keys; a pointer per block, twice
with ``keep_local``, which the mocker uses: an engine also needs the local hashes).
Not thread-safe: the event loop that owns it (the router's, the mocker engine's) calls it.
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
    """``compute_sequence_hashes(compute_block_hashes(...))`` with the hashes of known prefixes reused.

    ``keep_local``: also remember the blocks' local hashes, for ``block_hashes`` (an engine stores
    blocks by both; the router needs only the chained ones, at half the memory)."""

    def __init__(
        self,
        block_size: int,
        checkpoint_blocks: int = DEFAULT_CHECKPOINT_BLOCKS,
        max_checkpoints: int = DEFAULT_MAX_CHECKPOINTS,
        keep_local: bool = False,
    ) -> None:
        if block_size <= 0 or checkpoint_blocks <= 0 or max_checkpoints <= 0:
            raise ValueError("block_size, checkpoint_blocks and max_checkpoints must be positive")
        self.block_size = block_size
        self.checkpoint_blocks = checkpoint_blocks
        self.max_checkpoints = max_checkpoints
        self.keep_local = keep_local
        # checkpoint key -> (local hashes or None, chained hashes) of the prompt that made it
        self._memo: OrderedDict[tuple[int, int], tuple[tuple[int, ...] | None, tuple[int, ...]]] = (
            OrderedDict()
        )
        self.reused_blocks = 0  # blocks whose hashes came from the memo (since start)
        self.hashed_blocks = 0  # blocks hashed one by one

    def sequence_hashes(self, tokens: Sequence[int], lora_name: str | None = None) -> list[int]:
        """The chained hashes of ``tokens``' full blocks."""
        return self._hashes(tokens, lora_name)[1]

    def block_hashes(
        self, tokens: Sequence[int], lora_name: str | None = None
    ) -> tuple[list[int], list[int]]:
        """The local and the chained hashes of ``tokens``' full blocks (needs ``keep_local``)."""
        if not self.keep_local:
            raise ValueError("block_hashes needs a PrefixHasher made with keep_local=True")
        return self._hashes(tokens, lora_name)

    def _hashes(self, tokens: Sequence[int], lora_name: str | None) -> tuple[list[int], list[int]]:
        bs, cb = self.block_size, self.checkpoint_blocks
        n_full = len(tokens) // bs
        if n_full < cb or sys.byteorder != "little":
            self.hashed_blocks += n_full
            local = compute_block_hashes(tokens, bs, lora_name)
            return local, compute_sequence_hashes(local)
        salt = lora_name.encode() if lora_name else b""
        raw = memoryview(as_token_ids(tokens)).cast("B")
        step = bs * 4
        # One streaming digest over the blocks (salted like the local hashes), read at each checkpoint.
        stream = xxhash.xxh3_128(salt)
        keys: list[tuple[int, int]] = []
        for k in range(cb, n_full + 1, cb):
            stream.update(raw[(k - cb) * step : k * step])
            keys.append((k, stream.intdigest()))
        memo = self._memo
        start = 0
        known_local: tuple[int, ...] | None = None
        known_seq: tuple[int, ...] = ()
        for key in reversed(keys):
            known = memo.get(key)
            if known is not None:
                memo.move_to_end(key)
                start = key[0]
                known_local, known_seq = known
                break
        h = xxhash.xxh3_64_intdigest
        if salt:
            local = [
                h(bytes(raw[i * step : (i + 1) * step]) + salt, seed=HASH_SEED) for i in range(start, n_full)
            ]
        else:
            local = [h(raw[i * step : (i + 1) * step], seed=HASH_SEED) for i in range(start, n_full)]
        if start:
            seq = [*known_seq[:start], *compute_sequence_hashes([known_seq[start - 1], *local])[1:]]
            if known_local is not None:
                local = [*known_local[:start], *local]
        else:
            seq = compute_sequence_hashes(local)
        self.reused_blocks += start
        self.hashed_blocks += n_full - start
        entry = (tuple(local) if self.keep_local else None, tuple(seq))
        for key in keys:
            if key not in memo:  # those past ``start`` never are (else the longest hit was later)
                memo[key] = entry
        while len(memo) > self.max_checkpoints:
            memo.popitem(last=False)
        return local, seq
