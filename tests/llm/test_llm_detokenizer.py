"""Incremental detokenization: streamed text equals a full decode, stop strings cut exactly."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from dynamo.llm.detokenizer import Detokenizer

PROMPT = "<|im_start|>assistant\n"
TEXTS = [
    "Hello world! The capital of France is Paris.",
    "日本語のテキストと中文字符 🙂🚀👩‍👩‍👧 Ünïcödé é",
    "emoji only: 🧑🏽‍🚀🧑🏽‍🚀🧑🏽‍🚀",
    "  leading spaces, tabs\tand\nnew lines\n\n 12345 x1",
]


def stream(detok: Detokenizer, ids: list[int], per_add: int = 1) -> tuple[list[str], str]:
    chunks = [detok.add(ids[i : i + per_add]).text for i in range(0, len(ids), per_add)]
    tail = detok.flush()
    return chunks, "".join(chunks) + tail


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("per_add", [1, 3, 1000])
def test_streamed_text_equals_full_decode(tokenizer: Tokenizer, text: str, per_add: int) -> None:
    prompt = tokenizer.encode(PROMPT, add_special_tokens=False).ids
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    chunks, streamed = stream(Detokenizer(tokenizer, prompt), ids, per_add)
    assert streamed == tokenizer.decode(ids) == text
    assert all("\ufffd" not in chunk for chunk in chunks)  # never half a character


def test_multibyte_character_held_until_complete(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("🙂", add_special_tokens=False).ids
    assert len(ids) > 1  # the emoji spans several byte-level tokens
    detok = Detokenizer(tokenizer)
    assert [detok.add([i]).text for i in ids] == [""] * (len(ids) - 1) + ["🙂"]


def test_output_ending_inside_a_character_is_flushed_like_a_full_decode(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok 🧑🏽‍🚀", add_special_tokens=False).ids[:-1]
    detok = Detokenizer(tokenizer)
    chunks, streamed = stream(detok, ids)
    assert streamed == tokenizer.decode(ids)
    assert streamed.endswith("\ufffd") and "".join(chunks) == "ok 🧑🏽\u200d"


def test_prompt_ending_inside_a_character(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("x 日本語 done", add_special_tokens=False).ids
    split = next(i for i in range(1, len(ids)) if tokenizer.decode(ids[:i]).endswith("\ufffd"))
    detok = Detokenizer(tokenizer, ids[:split])
    _, streamed = stream(detok, ids[split:])
    # The prompt's text never leaks into the output; the completed character is the output's.
    assert streamed.endswith(" done")
    assert "x" not in streamed


def test_special_tokens_skipped_or_kept(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Hi<|im_end|>", add_special_tokens=False).ids
    assert stream(Detokenizer(tokenizer), ids)[1] == "Hi"
    assert stream(Detokenizer(tokenizer, skip_special_tokens=False), ids)[1] == "Hi<|im_end|>"


def metaspace_tokenizer() -> Tokenizer:
    """A SentencePiece-style tokenizer: a word's leading space is part of its token."""
    vocab = {"<unk>": 0, "▁Hello": 1, "▁world": 2, "!": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tok


def test_leading_space_comes_from_prompt_context() -> None:
    tok = metaspace_tokenizer()
    assert tok.decode([2]) == "world"  # alone, SentencePiece drops the leading space...
    detok = Detokenizer(tok, prompt_token_ids_tail=[1])
    assert stream(detok, [2, 3])[1] == " world!"  # ...but after the prompt's "Hello" it is kept


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def test_stop_string_across_token_boundaries(tokenizer: Tokenizer) -> None:
    ids = encode(tokenizer, "The answer is 42.</answer> trailing text")
    stop = "</answer>"
    results = []
    detok = Detokenizer(tokenizer, stop_strings=[stop])
    for token_id in ids:
        results.append(detok.add([token_id]))
        if results[-1].stopped:
            break
    text = "".join(r.text for r in results)
    assert text == "The answer is 42."
    assert results[-1].stopped and results[-1].stop_string == stop
    assert sum(len(tokenizer.decode([i])) > 0 for i in ids) > len(results) - 1  # stopped before the end
    assert len(encode(tokenizer, stop)) > 1  # the stop string really spans several tokens
    assert not any("<" in r.text for r in results)  # no piece of the stop string was ever released
    assert detok.add(encode(tokenizer, " more")).text == ""
    assert detok.flush() == ""


def test_stop_string_included(tokenizer: Tokenizer) -> None:
    ids = encode(tokenizer, "a b STOP c d")
    detok = Detokenizer(tokenizer, stop_strings=["STOP"], include_stop_str_in_output=True)
    assert stream(detok, ids)[1] == "a b STOP"


def test_false_start_of_stop_string_is_released(tokenizer: Tokenizer) -> None:
    ids = encode(tokenizer, "STAR STORM ST")
    detok = Detokenizer(tokenizer, stop_strings=["STOP"])
    assert stream(detok, ids)[1] == "STAR STORM ST"  # the trailing "ST" is held, then released by flush
    assert not detok.stopped


def test_earliest_stop_wins_in_one_chunk(tokenizer: Tokenizer) -> None:
    ids = encode(tokenizer, "one two three four")
    result = Detokenizer(tokenizer, stop_strings=["four", "two"]).add(ids)
    assert (result.text, result.stop_string) == ("one ", "two")


def test_stop_string_inside_multibyte_sequence(tokenizer: Tokenizer) -> None:
    ids = encode(tokenizer, "smile 🙂 then more")
    assert stream(Detokenizer(tokenizer, stop_strings=["🙂"]), ids)[1] == "smile "


def test_stop_string_matching_whole_first_token(tokenizer: Tokenizer) -> None:
    result = Detokenizer(tokenizer, stop_strings=["Hello"]).add(encode(tokenizer, "Hello world"))
    assert result.stopped and result.text == ""


_PIECES = ["a", "b", " ", "é", "日本", "\n", "x1", "?", "🙂", "👩‍👧", "</", "end>", "\t"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pieces=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=30),
    cuts=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=40),
    stops=st.sampled_from([(), ("</end>",), ("b b", "日")]),
)
def test_batches_of_any_size_give_the_text_of_one_token_at_a_time(
    tokenizer: Tokenizer, pieces: list[str], cuts: list[int], stops: tuple[str, ...]
) -> None:
    """An ``add`` of several ids (one Rust call) releases the same text, cut at the same stop, as
    adding them one by one."""
    prompt = tokenizer.encode(PROMPT, add_special_tokens=False).ids
    ids = tokenizer.encode("".join(pieces), add_special_tokens=False).ids
    one = Detokenizer(tokenizer, prompt, stop_strings=stops)
    results = [one.add([i]) for i in ids]
    expected = "".join(r.text for r in results) + one.flush()
    batched = Detokenizer(tokenizer, prompt, stop_strings=stops)
    text, at, k = "", 0, 0
    while at < len(ids) and not batched.stopped:
        n = cuts[k % len(cuts)]
        chunk = batched.add(ids[at : at + n])
        assert "\ufffd" not in chunk.text
        text += chunk.text
        at, k = at + n, k + 1
    text += batched.flush()
    assert text == expected
    assert batched.stopped == one.stopped
