"""One request inside the mocker engine: its tokens, KV blocks, progress and output buffer.

Journey: ``MockEngine.generate`` builds a ``Sequence`` from a ``PreprocessedRequest``; the
``Scheduler`` moves it waiting -> running (or transferring) -> finished and appends one token per
decode step to ``out``; the request's ``generate`` coroutine drains ``out`` into ``EngineOutput``s.
Plain ``__slots__`` class: it is touched once per token, so no pydantic and no per-token objects.
"""

from __future__ import annotations

import asyncio
import collections.abc
from typing import Any

from dynamo.router.prefix_hashes import PrefixHasher

WAITING = 0
RUNNING = 1
TRANSFERRING = 2  # decode worker: blocks reserved, waiting for the prefill worker's KV
FINISHED = 3

_LCG_A = 6364136223846793005
_LCG_C = 1442695040888963407
_MASK64 = (1 << 64) - 1
_FALLBACK_VOCAB = 1000


class TokenSampler:
    """Deterministic pseudo-random output token ids (a 64-bit LCG) that avoid special ids.

    Ids are drawn from ``[0, vocab_size)``; without a vocabulary size they are drawn from the
    prompt's own ids, which the tokenizer can always decode.
    """

    __slots__ = ("_avoid", "_pool", "_size", "_state")

    def __init__(
        self, seed: int, vocab_size: int | None, avoid: frozenset[int], prompt: collections.abc.Sequence[int]
    ) -> None:
        self._state = (seed ^ 0x9E3779B97F4A7C15) & _MASK64
        self._avoid = avoid
        self._pool: list[int] | None = None
        if vocab_size is None:
            pool = (
                [t for t in dict.fromkeys(prompt) if t not in avoid] if avoid else list(dict.fromkeys(prompt))
            )
            if pool:
                self._pool = pool
                self._avoid = frozenset()
            vocab_size = _FALLBACK_VOCAB
        self._size = len(self._pool) if self._pool is not None else vocab_size

    def draw(self) -> int:
        """A raw pseudo-random 31-bit number (also used for lengths)."""
        self._state = s = (self._state * _LCG_A + _LCG_C) & _MASK64
        return s >> 33

    def next_token(self) -> int:
        """The next output token id."""
        self._state = s = (self._state * _LCG_A + _LCG_C) & _MASK64
        i = (s >> 33) % self._size
        pool = self._pool
        if pool is not None:
            return pool[i]
        avoid = self._avoid
        if i in avoid:
            for _ in range(self._size):
                i = (i + 1) % self._size
                if i not in avoid:
                    break
        return i


class Sequence:
    """Engine-side state of one request."""

    __slots__ = (
        "acquired_blocks",
        "anonymous_blocks",
        "cached_tokens",
        "eos_at",
        "eos_token",
        "error",
        "finish",
        "generated",
        "kv_capacity",
        "local_hashes",
        "max_new_tokens",
        "num_computed",
        "num_tokens",
        "out",
        "prefill_only",
        "prefill_target",
        "prompt_len",
        "ready_at",
        "request_id",
        "sampler",
        "seq_hashes",
        "state",
        "tail",
        "transfer_in",
        "transfer_ms",
        "waiter",
    )

    def __init__(
        self,
        request_id: str,
        prompt: collections.abc.Sequence[int],
        block_size: int,
        max_new_tokens: int,
        sampler: TokenSampler,
        *,
        eos_at: int = 0,
        eos_token: int | None = None,
        prefill_only: bool = False,
        transfer_in: dict[str, Any] | None = None,
        hasher: PrefixHasher,
    ) -> None:
        self.request_id = request_id
        self.prompt_len = len(prompt)
        self.num_tokens = len(prompt)  # prompt + generated
        self.generated = 0
        self.max_new_tokens = max_new_tokens
        self.eos_at = eos_at  # generate EOS as output token number ``eos_at`` (0 = never)
        self.eos_token = eos_token
        self.sampler = sampler
        self.prefill_only = prefill_only
        self.transfer_in = transfer_in  # decode worker: the prefill worker's kv_transfer_params
        self.transfer_ms = 0.0
        self.ready_at = 0.0
        # Full blocks of the known tokens: chained (engine) and local hashes (``hasher``: the
        # engine's, which reuses a known prefix's); ``tail`` holds the tokens of the trailing
        # partial block.
        local, self.seq_hashes = hasher.block_hashes(prompt)
        self.local_hashes = local
        self.tail = list(prompt[len(local) * block_size :])
        # KV held while admitted: anonymous blocks and token capacity of all held blocks.
        self.anonymous_blocks = 0
        self.acquired_blocks = 0  # of seq_hashes, taken at admission (the rest: promoted since)
        self.kv_capacity = 0
        self.num_computed = 0  # tokens whose KV is computed
        self.prefill_target = 0  # tokens to compute before decoding (set on admission)
        self.cached_tokens: int | None = None  # prefix-cache hit of the first admission
        self.state = WAITING
        self.out: list[int] = []
        self.finish: str | None = None
        self.error: str | None = None
        self.waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, state={self.state}, tokens={self.num_tokens}, "
            f"generated={self.generated}/{self.max_new_tokens})"
        )

    def wake(self) -> None:
        """Wake the request's consumer if it waits for output."""
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)
