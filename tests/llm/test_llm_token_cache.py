"""The tokenization prefix cache gives exactly the ids of a full encode, with bounded memory."""

from __future__ import annotations

import json
from array import array
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from dynamo.llm.ascii_encoder import AsciiEncoder
from dynamo.llm.chat_template import ChatTemplate
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.openai import ChatCompletionRequest
from dynamo.llm.preprocessor import Preprocessor, inline_encode_limit
from dynamo.llm.token_cache import (
    ASCII_COST_DIVISOR,
    BUCKET,
    DEFAULT_MIN_CHARS,
    SHORT_CHARS,
    SHORT_ENTRIES,
    EncodeBudget,
    EncodeTooLong,
    PrefixTokenCache,
    _fingerprint,
    _size,
    tokenizer_only,
)

# Letters, digits, punctuation, whitespace runs and multi-byte characters (accents, CJK, emoji,
# a combining mark), so pieces start and end inside words, numbers and UTF-8 sequences.
ALPHABET = st.sampled_from(
    [
        *"abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,;:!?'\"()[]{}<>/\\|-_\n\t  ",
        *["é", "ß", "日本", "語", "🙂", "👩\u200d💻", "e\u0301", "\u00a0", "\u2019", "\u2014"],
    ]
)
TEXT = st.lists(ALPHABET, min_size=0, max_size=120).map("".join)
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]


@pytest.fixture(scope="module")
def tokenizer(smollm2_files: dict[str, bytes]) -> Tokenizer:
    return Tokenizer.from_str(smollm2_files["tokenizer.json"].decode())


@pytest.fixture(scope="module")
def template(smollm2_files: dict[str, bytes]) -> ChatTemplate:
    config = json.loads(smollm2_files["tokenizer_config.json"])
    result = ChatTemplate.from_tokenizer_config(config)
    assert result is not None
    return result


@pytest.fixture(scope="module")
def qualified(tokenizer: Tokenizer) -> PrefixTokenCache:
    cache = PrefixTokenCache.for_tokenizer(tokenizer)
    assert cache is not None  # SmolLM2's tokenizer qualifies: no normalizer, no stripping added tokens
    assert cache._ascii is not None  # and its ASCII text is tokenized by ``AsciiEncoder``
    return cache


def fresh(template_cache: PrefixTokenCache, ascii_fast: bool = True, **kwargs: int) -> PrefixTokenCache:
    """An empty cache like ``template_cache`` (reading the tokenizer's spec once per module); ASCII
    pieces through its ``AsciiEncoder`` unless ``ascii_fast`` is false."""
    return PrefixTokenCache(
        template_cache._tokenizer,
        template_cache._special_ids,
        ascii_encoder=template_cache._ascii if ascii_fast else None,
        **{"min_chars": 1, **kwargs},
    )


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.one_of(TEXT, st.sampled_from(SPECIALS)), min_size=1, max_size=8))
def test_any_text_with_added_tokens_anywhere_encodes_exactly(
    tokenizer: Tokenizer, qualified: PrefixTokenCache, pieces: list[str]
) -> None:
    text = "".join(pieces)  # added tokens land inside words, next to spaces, back to back
    cache = fresh(qualified)
    expected = tokenizer.encode(text, add_special_tokens=False).ids
    assert list(cache.encode(text)) == expected
    assert list(cache.encode(text)) == expected  # now from the cache


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    system=TEXT,
    cut=st.integers(min_value=0, max_value=200),
    tails=st.lists(TEXT, min_size=2, max_size=4),
    turns=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=4),
)
def test_conversations_sharing_prefixes_encode_exactly(
    tokenizer: Tokenizer,
    qualified: PrefixTokenCache,
    template: ChatTemplate,
    system: str,
    cut: int,
    tails: list[str],
    turns: list[tuple[str, str]],
) -> None:
    """Several chats whose system prompts share a prefix that ends anywhere (inside a word, inside
    a multi-byte sequence's neighbours), then grow turn by turn, all through one warm cache."""
    cache = fresh(qualified)
    for tail in tails:
        messages = [{"role": "system", "content": system[:cut] + tail}]
        for user, assistant in turns:
            messages.append({"role": "user", "content": user})
            prompt = template.render(template.prepare_messages([dict(m) for m in messages]))
            assert list(cache.encode(prompt)) == tokenizer.encode(prompt, add_special_tokens=False).ids
            messages.append({"role": "assistant", "content": assistant})
    assert cache.stats.hits > 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.one_of(TEXT, st.sampled_from(SPECIALS)), min_size=1, max_size=8))
def test_short_pieces_are_remembered_exactly(
    tokenizer: Tokenizer, qualified: PrefixTokenCache, pieces: list[str]
) -> None:
    """Pieces of at most ``SHORT_CHARS`` (the template's ``assistant\\n``) come from their own small
    table the second time: still the ids of a full encode, and no tokenizer call is needed."""
    cache = fresh(qualified, min_chars=DEFAULT_MIN_CHARS)
    text = "".join(pieces)
    expected = tokenizer.encode(text, add_special_tokens=False).ids
    assert list(cache.encode(text)) == expected
    remembered = [p for p in cache.split(text)[::2] if 0 < len(p) <= SHORT_CHARS]
    if len(remembered) == len([p for p in cache.split(text)[::2] if p]):
        assert list(cache.encode(text, EncodeBudget(0))) == expected  # nothing left to encode
    assert list(cache.encode(text)) == expected


def test_the_short_piece_table_is_bounded(qualified: PrefixTokenCache) -> None:
    cache = fresh(qualified, min_chars=DEFAULT_MIN_CHARS)
    for i in range(SHORT_ENTRIES + 10):
        cache.encode(f"<|im_start|>user\n{i}<|im_end|>")
    assert 0 < len(cache._short) <= SHORT_ENTRIES


def test_a_shared_system_prompt_is_encoded_once(tokenizer: Tokenizer, qualified: PrefixTokenCache) -> None:
    cache = fresh(qualified, min_chars=256)
    system = "You are a careful assistant. " * 200
    prompts = [
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nQuestion {i}?<|im_end|>\n"
        for i in range(5)
    ]
    for prompt in prompts:
        assert list(cache.encode(prompt)) == tokenizer.encode(prompt, add_special_tokens=False).ids
    stats = cache.stats
    assert (stats.misses, stats.hits) == (1, 4)  # the long system piece; the short ones are not kept
    assert stats.cached_tokens == 4 * len(tokenizer.encode(f"system\n{system}", add_special_tokens=False).ids)


def test_memory_is_bounded_and_old_pieces_are_evicted_first(qualified: PrefixTokenCache) -> None:
    cache = fresh(qualified, max_bytes=20_000, min_chars=100)
    texts = [f"<|im_start|>{i} " + "word " * 400 for i in range(10)]  # ~2 kB of text + ids each
    for text in texts:
        cache.encode(text)
        assert cache.stats.bytes <= 20_000
    assert cache.stats.evictions > 0
    hits = cache.stats.hits
    cache.encode(texts[-1])
    assert cache.stats.hits == hits + 1  # the newest is still there
    cache.encode(texts[0])
    assert cache.stats.hits == hits + 1  # the oldest was evicted


def test_tokenizers_where_pieces_are_not_exact_get_no_cache(smollm2_files: dict[str, bytes]) -> None:
    spec = json.loads(smollm2_files["tokenizer.json"])
    stripping = json.loads(json.dumps(spec))
    stripping["added_tokens"][1]["lstrip"] = True
    assert PrefixTokenCache.for_tokenizer(Tokenizer.from_str(json.dumps(stripping))) is None
    normalized = json.loads(json.dumps(spec))
    normalized["normalizer"] = {"type": "Lowercase"}
    assert PrefixTokenCache.for_tokenizer(Tokenizer.from_str(json.dumps(normalized))) is None
    assert PrefixTokenCache.for_tokenizer(Tokenizer.from_str(json.dumps(spec)), max_bytes=0) is None


def test_a_budget_refuses_more_uncached_text_than_it_has_left(
    tokenizer: Tokenizer, qualified: PrefixTokenCache
) -> None:
    cache = fresh(qualified, ascii_fast=False, min_chars=200)  # every character costs one
    system = "Answer in French, then in German, and keep it short. " * 6  # 318 characters, kept
    user = "user\nHi! Which rivers cross Madrid, please?"  # over SHORT_CHARS: encoded every time
    text = f"<|im_start|>system\n{system}<|im_end|><|im_start|>{user}<|im_end|>"
    with pytest.raises(EncodeTooLong):
        cache.encode(text, EncodeBudget(100))
    assert (cache.stats.hits, cache.stats.misses, cache.stats.uncached_tokens) == (0, 0, 0)
    full = tokenizer.encode(text, add_special_tokens=False).ids
    assert list(cache.encode(text)) == full  # no budget: encoded and kept
    budget = EncodeBudget(100)
    assert list(cache.encode(text, budget)) == full  # now only the user turn is left to encode
    assert budget.chars == 100 - len(user)
    # The budget is spent across calls: a request's second long message does not fit what is left.
    short = "Name three rivers of Spain, with their lengths in kilometres."  # < min_chars: never kept
    budget = EncodeBudget(100)
    cache.encode(short, budget)
    with pytest.raises(EncodeTooLong):
        cache.encode(short, budget)


def test_ascii_text_costs_a_budget_a_quarter_of_its_characters(
    tokenizer: Tokenizer, qualified: PrefixTokenCache
) -> None:
    cache = fresh(qualified, min_chars=10_000)  # nothing kept: every call encodes
    plain = "Which rivers cross Madrid? " * 12  # 324 ASCII characters: they cost 81
    accented = plain.replace("Madrid", "Léon")  # one non-ASCII character: the tokenizer's, 1 each
    budget = EncodeBudget(100)
    assert list(cache.encode(plain, budget)) == tokenizer.encode(plain, add_special_tokens=False).ids
    assert budget.chars == 100 - len(plain) // ASCII_COST_DIVISOR
    with pytest.raises(EncodeTooLong) as refused:
        cache.encode(accented, EncodeBudget(100))
    assert refused.value.texts == [accented]  # what a caller may learn before trying again


def test_learnt_pieces_are_found_by_the_next_encode_and_not_counted_as_hits(
    tokenizer: Tokenizer, qualified: PrefixTokenCache
) -> None:
    cache = fresh(qualified, min_chars=256)
    system = "You answer questions about rivers, briefly and in plain words. " * 40  # 2,520 characters
    prompt = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nThe Tagus?<|im_end|>\n"
    with pytest.raises(EncodeTooLong) as refused:
        cache.encode(prompt, EncodeBudget(100))
    texts = refused.value.texts
    assert cache.learnable(texts) and cache.learnable(["Léon " * 60]) and not cache.learnable([])
    # More than LEARN_FOREIGN_CHARS for the tokenizer:
    assert not cache.learnable(["日本語の文章です。" * 500])
    assert not cache.learnable(["Short turn one.", "Short turn two."])  # nothing it would keep
    slices = list(cache.learn_slices(texts))
    assert len(slices) >= 1
    budget = EncodeBudget(100)
    assert list(cache.encode(prompt, budget)) == tokenizer.encode(prompt, add_special_tokens=False).ids
    assert budget.chars > 90  # only the template's short words and the user turn were left
    stats = cache.stats
    assert (stats.misses, stats.hits, stats.cached_tokens) == (1, 0, 0)  # learnt for this prompt
    cache.encode(prompt)
    assert (stats.misses, stats.hits) == (1, 1)  # the next prompt with that system prompt: a hit


def test_inline_limit_makes_the_preprocessor_refuse_long_uncached_prompts(preprocessor: Preprocessor) -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Budget test system prompt, answer tersely. " * 20},
                {"role": "user", "content": "How far is the Moon?"},
            ],
        }
    )
    with inline_encode_limit(200), pytest.raises(EncodeTooLong):
        preprocessor.preprocess_chat(request, "r1")  # an 860-character system prompt to encode
    whole = preprocessor.preprocess_chat(request, "r2")  # no limit outside the block: encoded, kept
    with inline_encode_limit(200):  # the system prompt is cached now: only the short rest is encoded
        again = preprocessor.preprocess_chat(request, "r3")
    assert again.request.token_ids == whole.request.token_ids


def test_entries_are_token_arrays_counted_exactly_and_hits_copy_them(
    tokenizer: Tokenizer, qualified: PrefixTokenCache
) -> None:
    cache = fresh(qualified, max_bytes=32_000, min_chars=100)  # 4 entries fit (~7.2 kB each), not 5
    texts = [f"<|im_start|>{i} " + "token cache ünïcode " * 150 for i in range(5)]

    def counted() -> int:  # what the entries hold, by the cache's own measure
        return sum(_size(text, ids) for text, ids in cache.pieces())

    for text in texts:
        assert list(cache.encode(text)) == tokenizer.encode(text, add_special_tokens=False).ids
        assert cache.stats.bytes == counted() <= 32_000
        assert cache.stats.entries == len(cache.pieces())  # kept count as entries come and go
    assert cache.stats.evictions == 1 and all(
        isinstance(ids, array) and ids.itemsize == 4 for _, ids in cache.pieces()
    )  # 4 bytes a token
    for text in texts[1:3] * 2:
        ids = cache.encode(text)
        assert isinstance(ids, array) and list(ids) == tokenizer.encode(text, add_special_tokens=False).ids
        ids[-1] = 0  # the caller's copy: the cache's entry is not touched
    assert cache.stats.hits == 4 and cache.stats.bytes == counted()
    for text in texts[1:3]:
        assert list(cache.encode(text)) == tokenizer.encode(text, add_special_tokens=False).ids


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pieces=st.lists(
        st.one_of(TEXT, st.sampled_from([*SPECIALS, "<", "<|", "<|im_", "<|im_end", "<<|im_end|>"])),
        max_size=10,
    )
)
def test_split_cuts_where_the_regex_does(qualified: PrefixTokenCache, pieces: list[str]) -> None:
    text = "".join(pieces)  # added tokens, their beginnings, and a stray lead character
    assert qualified._lead == "<"
    assert qualified.split(text) == qualified._split.split(text)


def test_pieces_with_one_fingerprint_are_all_kept_and_found(
    tokenizer: Tokenizer, qualified: PrefixTokenCache
) -> None:
    cache = fresh(qualified, min_chars=100)
    base = "a shared system prompt, the same length for every user: " * 40
    # Same length and ends, different words in the middle: one fingerprint for all of them.
    at = (len(base) // 64 + 1) * 28 + 1  # four characters between two sampled ones
    texts = [base[:at] + f"{i:04d}" + base[at + 4 :] for i in range(BUCKET + 1)]
    assert len({_fingerprint(t) for t in texts}) == 1 and len(set(texts)) == len(texts)
    for text in texts[:BUCKET] * 2:
        assert list(cache.encode(text)) == tokenizer.encode(text, add_special_tokens=False).ids
    assert (cache.stats.misses, cache.stats.hits) == (BUCKET, BUCKET)
    cache.encode(texts[BUCKET])  # a fifth: the bucket's oldest makes room
    assert cache.stats.evictions == 1 and cache.stats.entries == BUCKET
    assert [t for t, _ in cache.pieces()] == texts[1:]
    assert cache.stats.bytes == sum(_size(t, ids) for t, ids in cache.pieces())


def _with_post_processor(spec: dict[str, Any], post_processor: dict[str, Any]) -> Tokenizer:
    changed = json.loads(json.dumps(spec))
    changed["post_processor"] = post_processor
    return Tokenizer.from_str(json.dumps(changed))


BOS_TEMPLATE = {  # Llama's: the BOS token before the text (here SmolLM2's <|endoftext|>, id 0)
    "type": "TemplateProcessing",
    "single": [
        {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
        {"Sequence": {"id": "A", "type_id": 0}},
    ],
    "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}},
}


@pytest.fixture(scope="module")
def bos_preprocessor(smollm2_card: ModelDeploymentCard, smollm2_files: dict[str, bytes]) -> Preprocessor:
    spec = json.loads(smollm2_files["tokenizer.json"])
    tokenizer = _with_post_processor(
        spec, {"type": "Sequence", "processors": [spec["post_processor"], BOS_TEMPLATE]}
    )
    return Preprocessor(smollm2_card, tokenizer, None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.one_of(TEXT, st.sampled_from(SPECIALS)), min_size=0, max_size=6))
def test_prompts_of_a_bos_adding_tokenizer_go_through_the_cache_exactly(
    bos_preprocessor: Preprocessor, pieces: list[str]
) -> None:
    """A completions prompt (``add_special_tokens``) of a tokenizer that puts a BOS before every
    text: the cache's ids between the BOS and nothing, as the tokenizer's own encode."""
    text = "".join(pieces)
    expected = bos_preprocessor.tokenizer.encode(text, add_special_tokens=True).ids
    assert list(bos_preprocessor.encode(text, add_special_tokens=True)) == expected
    assert list(bos_preprocessor.encode(text, add_special_tokens=True)) == expected  # cached now


def test_post_processors_that_do_more_than_wrap_the_text_are_not_wrapped(
    smollm2_card: ModelDeploymentCard, smollm2_files: dict[str, bytes]
) -> None:
    spec = json.loads(smollm2_files["tokenizer.json"])
    assert bos_wrap(Preprocessor(smollm2_card, _with_post_processor(spec, BOS_TEMPLATE), None)) == ([0], [])
    truncating = _with_post_processor(spec, BOS_TEMPLATE)
    truncating.enable_truncation(8)
    assert bos_wrap(Preprocessor(smollm2_card, truncating, None)) is None


def bos_wrap(pre: Preprocessor) -> tuple[list[int], list[int]] | None:
    wrap = pre._special_wrap
    return None if wrap is None else (list(wrap[0]), list(wrap[1]))


def test_within_tokenizer_only_the_ascii_encoder_is_not_used(
    tokenizer: Tokenizer, qualified: PrefixTokenCache
) -> None:
    """A pool thread beside the event loop encodes with the tokenizer alone (it releases the GIL;
    ``AsciiEncoder`` is Python and would not)."""
    encoder = AsciiEncoder.for_tokenizer(tokenizer)
    assert encoder is not None
    used: list[str] = []
    ascii_encode = encoder.encode
    encoder.encode = lambda text: used.append(text) or ascii_encode(text)  # type: ignore[method-assign]
    cache = PrefixTokenCache(tokenizer, qualified._special_ids, min_chars=10_000, ascii_encoder=encoder)
    text = "<|im_start|>user\nWhich rivers cross Madrid, and how long are they?<|im_end|>"
    expected = tokenizer.encode(text, add_special_tokens=False).ids
    with tokenizer_only():
        assert list(cache.encode(text)) == expected
    assert used == []
    assert list(cache.encode(text)) == expected
    assert used  # outside the block, ASCII pieces go through it
