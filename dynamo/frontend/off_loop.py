"""Work that a large request moves off the event loop (journey: parse and preprocess of bodies
over ``LARGE_BODY``, embeddings' tokenization and response).

``maybe_off_loop(offload, fn, *args)`` calls ``fn`` right here, or when ``offload`` in a thread
with ``tokenizer_only`` in force: any tokenizing there uses the Hugging Face tokenizer, which
releases the GIL, not the ASCII encoder, which is Python and would hold the GIL the loop needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from dynamo.llm.token_cache import tokenizer_only

_T = TypeVar("_T")


async def maybe_off_loop(offload: bool, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)``, in a thread beside the event loop when ``offload``."""
    if not offload:
        return fn(*args)
    return await asyncio.to_thread(_tokenizer_only_call, fn, *args)


def _tokenizer_only_call(fn: Callable[..., _T], *args: Any) -> _T:
    with tokenizer_only():
        return fn(*args)
