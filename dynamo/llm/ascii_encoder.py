"""Exact tokenization of ASCII text for byte-level BPE tokenizers, in Python with a word cache.

Journey: parse -> **preprocess: chat template -> tokenize** (``PrefixTokenCache`` calls this for
the pieces it does not hold) -> route -> engine.

A byte-level BPE tokenizer (GPT-2, SmolLM2, Llama 3, Qwen 2) cuts its input into pre-tokens with
regular expressions, maps each pre-token's bytes to characters and runs the BPE model on each
pre-token alone. On ASCII text the regular expressions' Unicode classes are plain ASCII sets, so
Python's ``re`` cuts the text the same way, and a pre-token's ids, computed once with the
tokenizer's own model (``Tokenizer.model.tokenize``), are reused from a dict whenever the word
comes back. On long English text that is several times less CPU than the Hugging Face encode (its
cost is measured in ``benchmarks/results/profiles/README.md``).

``AsciiEncoder.for_tokenizer`` returns ``None`` unless it can reproduce the tokenizer's steps: no
normalizer (or a Unicode normal form, which leaves ASCII alone), pre-tokenizers among ``Digits``,
``Split`` (a regex or a string, behaviour ``isolated``, not inverted; regexes whose escapes and
``\\p{..}`` classes translate to ASCII) and ``ByteLevel`` (last, no prefix space), a BPE model
without dropout, no truncation or padding. It also checks itself against the tokenizer on a sample
of every ASCII character before it is used. ``encode`` takes ASCII text without added tokens
(``PrefixTokenCache`` cuts those out first); ``segments`` cuts other text into ASCII pieces and
pieces for the tokenizer, where that is exact (Llama 3's, Qwen 2's and ``ByteLevel``'s patterns);
``encode_slices`` yields a long text's ids in slices, so that a caller on the event loop can hand
it back between them.
"""

from __future__ import annotations

import json
import logging
import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any

from tokenizers import Tokenizer

from dynamo.llm.byte_level import byte_level_alphabet
from dynamo.llm.token_ids import TYPECODE, TokenIds

log = logging.getLogger(__name__)

MAX_WORDS = 1 << 16  # pre-tokens remembered; the table is emptied when full (the common words return at once)
EAGER_CHARS = 1 << 16  # texts up to this long are cut into pre-tokens in one go by ``encode_slices``
SLICE_PRETOKENS = 2048  # pre-tokens per slice of ``encode_slices`` (about half a millisecond here)

# ``ByteLevel``'s own regex (``use_regex``), as the Hugging Face tokenizers library writes it.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# ``Split`` regexes after which a space between two ASCII letters always ends a pre-token and
# starts the next, with nothing before it depending on what follows (``segments``): Llama 3's and
# Qwen 2's, as their ``tokenizer.json`` files write them. ``ByteLevel``'s own regex is one too.
CUTTABLE_SPLITS = frozenset(
    {
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    }
)
_ASCII_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")

# The ASCII members of the Unicode general categories a pattern may name (others: not translated).
_ASCII_CATEGORIES = {
    "L": "A-Za-z",
    "Lu": "A-Z",
    "Ll": "a-z",
    "Lt": "",
    "Lm": "",
    "Lo": "",
    "M": "",
    "Mn": "",
    "Mc": "",
    "Me": "",
    "N": "0-9",
    "Nd": "0-9",
    "Nl": "",
    "No": "",
}
# Escapes that mean the same to Oniguruma (Unicode) and to Python's ``re`` (ASCII) on ASCII text.
_SAME_ESCAPES = set("sSdDwWrntfv") | set("\\.^$|?*+()[]{}/-'\" #&~!,:;<=>@%`_")
_CATEGORY = re.compile(r"\\([pP])(?:\{\^?([A-Za-z_]+)\}|([A-Za-z]))")


_ASCII_TO_BYTE_LEVEL = {b: c for b, c in byte_level_alphabet().items() if b < 128}


def ascii_pattern(pattern: str) -> str | None:
    """``pattern`` (Oniguruma syntax, as in a ``tokenizer.json``) rewritten for Python's ``re`` on
    ASCII text, or ``None`` when it uses something not translated here."""
    out: list[str] = []
    in_class = negated_class = False
    class_start = 0
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            m = _CATEGORY.match(pattern, i)
            if m is not None:
                name = m.group(2) or m.group(3)
                negated = (m.group(1) == "P") != ("{^" in m.group(0))
                members = _ASCII_CATEGORIES.get(name)
                if members is None or (negated and in_class):
                    return None
                if in_class:
                    out.append(members)
                elif negated:
                    out.append(f"[^{members}]" if members else r"[\s\S]")
                else:
                    out.append(f"[{members}]" if members else r"[^\s\S]")
                i = m.end()
                continue
            if i + 1 >= len(pattern) or pattern[i + 1] not in _SAME_ESCAPES:
                return None
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
            negated_class = pattern.startswith("[^", i)
            i += 2 if negated_class else 1
            class_start = len(out)
            if i < len(pattern) and pattern[i] == "]":  # a leading ']' is a member
                out.append(r"\]")
                i += 1
            continue
        if ch == "[" and in_class:
            return None  # nested classes (Oniguruma set operations)
        if ch == "]" and in_class:
            in_class = False
            members = "".join(out[class_start:])
            del out[class_start:]
            if members:
                out.append(f"[^{members}]" if negated_class else f"[{members}]")
            else:  # every member was a category with no ASCII characters
                out.append(r"[\s\S]" if negated_class else r"[^\s\S]")
            i += 1
            continue
        out.append(ch)
        i += 1
    if in_class:
        return None
    return "".join(out)


@dataclass(frozen=True, slots=True)
class PreTokenizer:
    """One pre-tokenizer as a cut of a piece into pieces: all at once, or lazily as they are found."""

    cut: Callable[[str], list[str]]
    lazy: Callable[[str], Iterator[str]]
    cuttable: bool = False  # a space between two ASCII letters is a boundary (see ``CUTTABLE_SPLITS``)


def _isolating(regex: re.Pattern[str], cuttable: bool = False) -> PreTokenizer:
    """``Split(regex, behavior="isolated")``: every match and every stretch between them a piece."""

    def lazy(text: str) -> Iterator[str]:
        pos = 0
        for m in regex.finditer(text):
            start, end = m.span()
            if start > pos:
                yield text[pos:start]
            yield text[start:end]
            pos = end
        if pos < len(text):
            yield text[pos:]

    grouped = re.compile(f"({regex.pattern})", regex.flags)
    if grouped.groups != 1:
        return PreTokenizer(lambda text: list(lazy(text)), lazy, cuttable)

    def split(text: str) -> list[str]:  # ``split`` returns the stretches (some empty) and the matches
        return [piece for piece in grouped.split(text) if piece]

    return PreTokenizer(split, lazy, cuttable)


def _covering(regex: re.Pattern[str]) -> PreTokenizer:
    """``ByteLevel``'s own split: its regex matches every character, so the matches are the pieces."""
    return PreTokenizer(regex.findall, lambda text: map(re.Match.group, regex.finditer(text)), True)


_IDENTITY = PreTokenizer(lambda text: [text], lambda text: iter((text,)), True)


def _step(spec: dict[str, Any], last: bool) -> PreTokenizer | None:
    """One pre-tokenizer of the tokenizer's sequence as a cut, or ``None`` if not reproduced here."""
    kind = spec.get("type")
    if kind == "ByteLevel":
        if not last or spec.get("add_prefix_space"):
            return None
        if not spec.get("use_regex", True):
            return _IDENTITY
        return _covering(re.compile(ascii_pattern(GPT2_PATTERN) or "", re.ASCII))
    if last:
        return None  # the byte-level mapping must come last
    if kind == "Digits":
        return _isolating(re.compile("[0-9]" if spec.get("individual_digits") else "[0-9]+"), True)
    if kind == "Split":
        if spec.get("behavior") != "Isolated" or spec.get("invert"):
            return None
        pattern = spec.get("pattern") or {}
        if "String" in pattern:
            translated: str | None = re.escape(pattern["String"])
        else:
            translated = ascii_pattern(pattern.get("Regex", ""))
        if not translated:
            return None
        try:
            regex = re.compile(translated, re.ASCII)
        except re.error:
            return None
        if regex.match(""):
            return None  # a pattern that matches nothing at all: its empty pieces are not modelled
        return _isolating(regex, pattern.get("Regex") in CUTTABLE_SPLITS)
    return None


def _steps(spec: dict[str, Any] | None) -> list[PreTokenizer] | None:
    if spec is None:
        return None
    chain = spec["pretokenizers"] if spec.get("type") == "Sequence" else [spec]
    steps = [_step(s, i == len(chain) - 1) for i, s in enumerate(chain)]
    if not steps or any(s is None for s in steps):
        return None
    return [s for s in steps if s is not None and s is not _IDENTITY]


def _normalizer_keeps_ascii(spec: dict[str, Any] | None) -> bool:
    if spec is None:
        return True
    if spec.get("type") == "Sequence":
        return all(_normalizer_keeps_ascii(s) for s in spec.get("normalizers", []))
    return spec.get("type") in {"NFC", "NFD", "NFKC", "NFKD"}


# Every ASCII character, contractions, digit runs, whitespace runs before words and at the end.
SELF_CHECK = (
    "".join(map(chr, range(128)))
    + " It's we're they've I'm you'll he'd I'D 12345 x1y22 a  b\n\n c \t\r\n  d  'll's ~!@# \x0b\x0c end  \n"
)


class AsciiEncoder:
    """``tokenizer.encode(text, add_special_tokens=False).ids`` for ASCII ``text`` without added
    tokens. Thread-safe (a dict's get and set are atomic in CPython)."""

    def __init__(self, tokenizer: Tokenizer, steps: list[PreTokenizer], max_words: int = MAX_WORDS) -> None:
        self._model = tokenizer.model
        self.cuttable = all(step.cuttable for step in steps)  # ``segments`` may cut mixed text
        self._steps = steps
        self._words: dict[str, TokenIds] = {}
        self._max_words = max_words

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, spec: dict[str, Any] | None = None) -> AsciiEncoder | None:
        """An encoder for ``tokenizer`` (``spec``: its parsed ``to_str()``), or ``None`` when its
        steps are not reproduced here or the self-check disagrees with it."""
        spec = spec if spec is not None else json.loads(tokenizer.to_str())
        model = spec.get("model") or {}
        if (
            model.get("type") != "BPE"
            or model.get("dropout")
            or tokenizer.truncation is not None
            or tokenizer.padding is not None
            or not _normalizer_keeps_ascii(spec.get("normalizer"))
        ):
            return None
        steps = _steps(spec.get("pre_tokenizer"))
        if steps is None:
            return None
        encoder = cls(tokenizer, steps)
        expected = tokenizer.encode(SELF_CHECK, add_special_tokens=False).ids
        if list(encoder.encode(SELF_CHECK)) != expected:
            log.warning("ASCII fast tokenization disagrees with the tokenizer on its self-check; not used")
            return None
        return encoder

    def pretokens(self, text: str) -> list[str]:
        """``text``'s pre-tokens, in order."""
        pieces = [text]
        for step in self._steps:
            cut = step.cut
            pieces = cut(pieces[0]) if len(pieces) == 1 else [p for piece in pieces for p in cut(piece)]
        return pieces

    def encode(self, text: str) -> TokenIds:
        """The token ids of ASCII ``text``."""
        return self._ids(self.pretokens(text))

    def encode_slices(self, text: str, size: int = SLICE_PRETOKENS) -> Iterator[TokenIds]:
        """``text``'s ids in consecutive slices of ``size`` pre-tokens (joined, they are ``encode``'s).
        A text of up to ``EAGER_CHARS`` is cut into pre-tokens at once, before the first slice (C
        code, ~2 ms at most); a longer one's last pre-tokenizer cuts lazily, a slice at a time (its
        regex costs ~1.8x then), those before it (``Digits``: one C call) before the first slice."""
        if len(text) <= EAGER_CHARS or not self._steps:
            pretokens = self.pretokens(text)
            for start in range(0, len(pretokens), size):
                yield self._ids(pretokens[start : start + size])
            return
        *first, last = self._steps
        pieces = [text]
        for step in first:
            pieces = [p for piece in pieces for p in step.cut(piece)]
        lazy = chain.from_iterable(map(last.lazy, pieces))
        while slice_ := list(islice(lazy, size)):
            yield self._ids(slice_)

    def segments(self, text: str) -> list[tuple[str, bool]]:
        """``text`` (any characters, no added tokens) cut into pieces that pre-tokenize on their
        own as they do inside it, each with whether it is ASCII: every non-ASCII character is in a
        non-ASCII piece reaching from the nearest boundary before it to the nearest after it, where
        a boundary is a space between two ASCII letters (``cuttable`` tokenizers only; for the
        others, ``text`` whole). Joined, the pieces are ``text``."""
        if not self.cuttable:
            return [(text, text.isascii())]
        pieces: list[tuple[str, bool]] = []
        done = 0  # text[:done] is in ``pieces``
        start = end = -1  # the non-ASCII piece being grown
        for run in _NON_ASCII.finditer(text):
            first, last = run.span()
            if first < end:
                continue  # inside the piece being grown
            cut = _last_cut(text, max(done, end), first)
            if start >= 0 and cut < 0:  # no boundary since the piece's end: grow it
                end = _first_cut(text, last)
                continue
            if start >= 0:
                pieces.append((text[start:end], False))
                done = end
            if cut < 0:
                cut = done
            if cut > done:
                pieces.append((text[done:cut], True))
            start, end = cut, _first_cut(text, last)
            done = cut
        if start >= 0:
            pieces.append((text[start:end], False))
            done = end
        if done < len(text):
            pieces.append((text[done:], True))
        return pieces

    def _ids(self, pretokens: list[str]) -> TokenIds:
        out = array(TYPECODE)
        words = self._words
        get = words.get
        for word in pretokens:
            ids = get(word)
            if ids is None:
                ids = array(
                    TYPECODE, [t.id for t in self._model.tokenize(word.translate(_ASCII_TO_BYTE_LEVEL))]
                )
                if len(words) >= self._max_words:
                    words.clear()
                words[word] = ids
            out += ids
        return out


def _is_cut(text: str, at: int) -> bool:
    """A space between two ASCII letters at ``at``."""
    return 0 < at < len(text) - 1 and text[at - 1] in _ASCII_LETTERS and text[at + 1] in _ASCII_LETTERS


def _first_cut(text: str, start: int) -> int:
    """The first boundary at or after ``start``, else the end of ``text``."""
    at = text.find(" ", start)
    while at != -1 and not _is_cut(text, at):
        at = text.find(" ", at + 1)
    return len(text) if at == -1 else at


def _last_cut(text: str, low: int, high: int) -> int:
    """The last boundary in ``low..high-1``, else -1."""
    at = text.rfind(" ", low, high)
    while at != -1 and not _is_cut(text, at):
        at = text.rfind(" ", low, at)
    return at
