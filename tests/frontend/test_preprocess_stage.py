"""The preprocess stage tokenizes a long uncached prompt in its thread pool (mostly ASCII ones:
learnt in slices on the event loop) and a cached one on the event loop, with the same token ids
either way."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dynamo.frontend.endpoints import CHAT
from dynamo.frontend.stages.preprocess import (
    INLINE_ENCODE_CHARS,
    _lower_priority,
    preprocess,
    preprocess_nice,
    preprocess_threads,
)
from dynamo.llm import token_cache
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.openai import ChatCompletionRequest
from dynamo.llm.preprocessor import Preprocessor
from dynamo.llm.token_cache import ASCII_COST_DIVISOR, LEARN_FOREIGN_CHARS
from dynamo.llm.token_ids import TokenIds


def test_long_uncached_prompts_go_to_the_pool_or_are_learnt_in_slices_and_cached_ones_stay_on_the_loop(
    smollm2_tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = ModelDeploymentCard.from_local_path(smollm2_tokenizer_dir)
    pre = Preprocessor.from_card(card, card.read_files())
    encode = pre.encode
    where: list[str] = []
    learn_max = 25_000  # the prompt past it is small enough for SmolLM2's context
    monkeypatch.setattr(token_cache, "LEARN_MAX_CHARS", learn_max)

    def recorded(text: str, add_special_tokens: bool) -> list[int]:
        where.append(threading.current_thread().name)
        return encode(text, add_special_tokens)

    pre.encode = recorded  # type: ignore[method-assign]
    # The stage reads only these two attributes of the served model.
    model: Any = SimpleNamespace(preprocessor=pre, require=lambda _model_type: None)
    cyrillic = "Вы краткий помощник транспортной компании. " * 110  # no ASCII piece at all
    accented = "Vous êtes un assistant concis d'une société de transport ; une ligne. " * 80
    plain = "You are a terse assistant for a shipping company; answer in one line. " * 300
    huge = "You are a terse assistant for parcels. " * (learn_max // 30)
    assert (
        len(cyrillic) > LEARN_FOREIGN_CHARS
        and len(accented) > INLINE_ENCODE_CHARS
        and len(plain) > INLINE_ENCODE_CHARS * ASCII_COST_DIVISOR
    )
    assert len(huge) > learn_max

    def request(system: str, question: str) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate(
            {
                "model": "m",
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            }
        )

    async def ticking() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0)

    ticks: list[int] = []
    asked: list[tuple[str, str]] = []

    async def scenario() -> list[TokenIds]:
        loop = threading.current_thread().name
        ids = []

        async def run(system: str, question: str) -> None:
            asked.append((system, question))
            [out] = await preprocess(model, CHAT, request(system, question), f"r{len(asked)}", offload=False)
            ids.append(out.request.token_ids)

        await run(cyrillic, "Где посылка 1?")
        assert where[0] == loop and where[-1].startswith("preprocess")  # tried here, then the pool
        where.clear()
        await run(cyrillic, "Где посылка 2?")
        assert where == [loop]  # the system prompt was cached: no thread hop
        where.clear()
        await run(accented, "Où est le colis 3 ?")
        assert set(where) == {loop}  # ASCII words and a few others: encoded here, no thread hop
        where.clear()
        ticker = asyncio.create_task(ticking())
        await asyncio.sleep(0)
        before = len(ticks)
        await run(plain, "Where is parcel 4?")
        assert where == [loop, loop]  # ASCII: refused inline, learnt here, then preprocessed here
        assert len(ticks) - before >= 2  # the loop ran other tasks between the learnt slices
        ticker.cancel()
        where.clear()
        await run(huge, "Where is parcel 5?")
        assert where[0] == loop and where[-1].startswith("preprocess")  # too long to learn on the loop
        return ids

    for ids, (system, question) in zip(asyncio.run(scenario()), asked, strict=True):
        prompt = pre.render_chat(request(system, question))
        assert list(ids) == pre.tokenizer.encode(prompt, add_special_tokens=False).ids


def test_the_pool_size_comes_from_the_environment_or_the_cores() -> None:
    assert preprocess_threads({"DYN_PREPROCESS_THREADS": "3"}) == 3
    assert preprocess_threads({}) == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError, match="DYN_PREPROCESS_THREADS"):
            preprocess_threads({"DYN_PREPROCESS_THREADS": bad})


def test_pool_threads_run_below_the_event_loop() -> None:
    assert preprocess_nice({}) == 10 and preprocess_nice({"DYN_PREPROCESS_NICE": "0"}) == 0
    for bad in ("20", "-1", "low"):
        with pytest.raises(ValueError, match="DYN_PREPROCESS_NICE"):
            preprocess_nice({"DYN_PREPROCESS_NICE": bad})
    loop_nice = os.getpriority(os.PRIO_PROCESS, 0)
    with ThreadPoolExecutor(1, initializer=_lower_priority, initargs=(10,)) as pool:
        thread_nice = pool.submit(os.getpriority, os.PRIO_PROCESS, 0).result()
    assert thread_nice == min(19, loop_nice + 10)
    assert os.getpriority(os.PRIO_PROCESS, 0) == loop_nice  # the caller's thread keeps its own


def test_the_frontend_refuses_a_bad_pool_setting_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read with the flags (a bad value stops the frontend with one line naming it), not at the
    pool's first use (where it failed the first long prompt's request)."""
    from dynamo.frontend.args import FrontendConfig, build_parser

    def config() -> FrontendConfig:
        return FrontendConfig.from_args(build_parser().parse_args([]))

    monkeypatch.setenv("DYN_PREPROCESS_THREADS", "2")
    monkeypatch.setenv("DYN_PREPROCESS_NICE", "5")
    assert (config().preprocess_threads, config().preprocess_nice) == (2, 5)
    for name, bad in (("DYN_PREPROCESS_NICE", "abc"), ("DYN_PREPROCESS_THREADS", "0")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=name):
            config()
        monkeypatch.setenv(name, "1")
