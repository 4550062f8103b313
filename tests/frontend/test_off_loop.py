"""``maybe_off_loop`` runs its work here, or in a thread where tokenizing uses the GIL-free
tokenizer alone."""

from __future__ import annotations

import asyncio
import threading

from dynamo.frontend.off_loop import maybe_off_loop
from dynamo.llm import token_cache


def where() -> tuple[str, bool]:
    return threading.current_thread().name, token_cache._TOKENIZER_ONLY.get()


def test_offloaded_work_runs_in_a_thread_with_the_tokenizer_alone() -> None:
    async def scenario() -> tuple[tuple[str, bool], tuple[str, bool], bool]:
        here = await maybe_off_loop(False, where)
        there = await maybe_off_loop(True, where)
        return here, there, token_cache._TOKENIZER_ONLY.get()

    loop_thread = threading.current_thread().name
    here, there, after = asyncio.run(scenario())
    assert here == (loop_thread, False)
    assert there[0] != loop_thread and there[1] is True
    assert after is False  # the loop's own context is untouched
