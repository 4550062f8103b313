"""``AsciiEncoder`` gives exactly the Hugging Face tokenizer's ids on ASCII text, for SmolLM2's
tokenizer and for the pre-tokenizers of Llama 3 and Qwen 2 (on SmolLM2's vocabulary), and declines
the tokenizers whose steps it does not reproduce."""

from __future__ import annotations

import json
from array import array
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from dynamo.llm import ascii_encoder
from dynamo.llm.ascii_encoder import AsciiEncoder, ascii_pattern

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Every ASCII character, weighted towards what prompts hold: words, spaces, newlines, digits,
# apostrophes of contractions in either case, punctuation runs, whitespace runs before words.
ASCII_TEXT = st.lists(
    st.one_of(
        st.sampled_from([chr(c) for c in range(128)]),
        st.sampled_from(["the", " cat", "Word", " ", "  ", "\n", "\r\n", "\t", "'s", "'LL", "'re", "'D"]),
        st.sampled_from(["7", "42", "2026", " 123456", "...", "?!", " --", '{"a": 1}', "\n\n  "]),
    ),
    max_size=60,
).map("".join)


def _variant(spec: dict[str, Any], pre_tokenizer: dict[str, Any], **model: Any) -> Tokenizer:
    changed = json.loads(json.dumps(spec))
    changed["pre_tokenizer"] = pre_tokenizer
    changed["model"].update(model)
    return Tokenizer.from_str(json.dumps(changed))


def _split_then_bytes(pattern: str) -> dict[str, Any]:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }


@pytest.fixture(scope="module")
def spec(smollm2_files: dict[str, bytes]) -> dict[str, Any]:
    return json.loads(smollm2_files["tokenizer.json"])


@pytest.fixture(scope="module")
def small_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """SmolLM2's tokenizer cut to its first 1,000 ids (its byte alphabet and first merges): builds in
    milliseconds, for the tests that look only at a tokenizer's steps, not its vocabulary."""
    keep = 1000
    small = json.loads(json.dumps(spec))
    vocab = {token: i for token, i in spec["model"]["vocab"].items() if i < keep}
    merges = [m.split(" ") if isinstance(m, str) else m for m in spec["model"]["merges"]]
    small["model"]["vocab"] = vocab
    small["model"]["merges"] = [m for m in merges if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    small["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < keep]
    return small


@pytest.fixture(scope="module")
def tokenizers(spec: dict[str, Any]) -> dict[str, Tokenizer]:
    return {
        "smollm2": Tokenizer.from_str(json.dumps(spec)),
        "llama3-style": _variant(spec, _split_then_bytes(LLAMA3_PATTERN), ignore_merges=True),
        "qwen2-style": _variant(spec, _split_then_bytes(QWEN2_PATTERN)),
    }


@pytest.fixture(scope="module")
def encoders(tokenizers: dict[str, Tokenizer]) -> dict[str, AsciiEncoder]:
    found = {name: AsciiEncoder.for_tokenizer(tok) for name, tok in tokenizers.items()}
    assert all(found.values()), found  # each of them is reproduced
    return found  # type: ignore[return-value]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ASCII_TEXT, slice_size=st.integers(min_value=1, max_value=8))
def test_ascii_text_encodes_exactly(
    tokenizers: dict[str, Tokenizer], encoders: dict[str, AsciiEncoder], text: str, slice_size: int
) -> None:
    for name, tokenizer in tokenizers.items():
        expected = tokenizer.encode(text, add_special_tokens=False).ids
        encoder = encoders[name]
        assert list(encoder.encode(text)) == expected, name
        assert list(encoder.encode(text)) == expected, name  # its words now from the table
        for eager_chars in (ascii_encoder.EAGER_CHARS, 0):  # cut at once, and lazily
            with patch.object(ascii_encoder, "EAGER_CHARS", eager_chars):
                joined = array("I")
                for part in encoder.encode_slices(text, slice_size):
                    joined += part
            assert list(joined) == expected, (name, eager_chars)


# ASCII words and spaces with other characters among them: accents inside and beside words, a
# curly apostrophe, CJK, an emoji, a no-break space (Unicode whitespace), a combining mark.
MIXED_TEXT = st.lists(
    st.one_of(
        st.sampled_from(["the", " cat", "Word", " ", "  ", "\n", "'s", "7", " 42", ".", " --"]),
        st.sampled_from(
            ["é", "café", " Léon", "\u2019", "\u2019s", "日本", " 語", "🙂", "\u00a0", "e\u0301", "—"]
        ),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=MIXED_TEXT)
def test_mixed_text_cut_at_spaces_between_ascii_letters_encodes_exactly(
    tokenizers: dict[str, Tokenizer], encoders: dict[str, AsciiEncoder], text: str
) -> None:
    for name, tokenizer in tokenizers.items():
        encoder = encoders[name]
        assert encoder.cuttable, name
        pieces = encoder.segments(text)
        assert "".join(piece for piece, _ in pieces) == text
        ids: list[int] = []
        for piece, ascii in pieces:
            assert piece and (not ascii or piece.isascii())
            ids += encoder.encode(piece) if ascii else tokenizer.encode(piece, add_special_tokens=False).ids
        assert ids == tokenizer.encode(text, add_special_tokens=False).ids, (name, pieces)


def test_only_known_split_patterns_are_cut(spec: dict[str, Any]) -> None:
    other = AsciiEncoder.for_tokenizer(_variant(spec, _split_then_bytes(r"\p{L}+|[^\p{L}]+")))
    assert other is not None and not other.cuttable
    assert other.segments("a café b") == [("a café b", False)]
    assert other.segments("plain") == [("plain", True)]


def test_the_word_table_is_bounded(tokenizers: dict[str, Tokenizer]) -> None:
    tokenizer = tokenizers["smollm2"]
    encoder = AsciiEncoder.for_tokenizer(tokenizer)
    assert encoder is not None
    encoder._max_words = 50
    text = " ".join(f"w{i}x" for i in range(400))
    assert list(encoder.encode(text)) == tokenizer.encode(text, add_special_tokens=False).ids
    assert 0 < len(encoder._words) <= 50


def test_tokenizers_whose_steps_are_not_reproduced_get_none(small_spec: dict[str, Any]) -> None:
    spec = small_spec
    assert AsciiEncoder.for_tokenizer(Tokenizer.from_str(json.dumps(spec))) is not None  # as it is: built
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    declined = {
        "prefix space": _variant(spec, {**byte_level, "add_prefix_space": True}),
        "metaspace": _variant(spec, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}),
        "punctuation class": _variant(spec, _split_then_bytes(r"\p{P}+|[^\p{P}]+")),
        "nested class": _variant(spec, _split_then_bytes(r"[a[b]]+|\s+")),
        "removed splits": _variant(
            spec,
            {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed", "invert": False},
                    {**byte_level, "use_regex": False},
                ],
            },
        ),
        "dropout": _variant(spec, byte_level, dropout=0.1),
    }
    lowercase = json.loads(json.dumps(spec))
    lowercase["normalizer"] = {"type": "Lowercase"}
    declined["lowercase"] = Tokenizer.from_str(json.dumps(lowercase))
    truncating = Tokenizer.from_str(json.dumps(spec))
    truncating.enable_truncation(16)
    declined["truncation"] = truncating
    for name, tokenizer in declined.items():
        assert AsciiEncoder.for_tokenizer(tokenizer) is None, name


def test_unicode_classes_become_their_ascii_members() -> None:
    assert ascii_pattern(r"[^\s\p{L}\p{N}]+") == r"[^\sA-Za-z0-9]+"
    assert ascii_pattern(r" ?\p{L}+|\pN") == r" ?[A-Za-z]+|[0-9]"
    assert ascii_pattern(r"[\p{Lo}\p{M}]+|x") == r"[^\s\S]+|x"  # no ASCII member: never matches
    assert ascii_pattern(r"[^\p{Lo}]|\p{M}") == r"[\s\S]|[^\s\S]"
    assert ascii_pattern(r"[]a]") == r"[\]a]"
    assert ascii_pattern(r"\P{L}") == r"[^A-Za-z]"
    assert ascii_pattern(r"[^\P{L}]") is None  # a negated class inside a class
    assert ascii_pattern(r"\h+") is None  # Oniguruma's hex digit: not Python's
    assert ascii_pattern(r"\p{Greek}") is None
