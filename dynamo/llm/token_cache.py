"""Tokenization prefix cache: rendered prompts that share text between special tokens (a system
prompt, a tool list, earlier turns of a chat) reuse that text's token ids instead of encoding it
again.

Journey: parse -> **preprocess: chat template -> tokenize (here)** -> route -> engine.

Exactness: a Hugging Face tokenizer first cuts its input at its added tokens (``<|im_start|>``,
``<|im_end|>``, ...) and encodes each piece between them on its own, so the ids of a prompt are
the ids of its pieces, concatenated, with each added token's id between them. This holds when the
tokenizer has no normalizer and no added token strips the whitespace around it (``lstrip`` /
``rstrip``) or matches after normalization; ``PrefixTokenCache.for_tokenizer`` returns ``None``
for any other tokenizer (encode whole, as before). A property test checks the equality over
generated conversations.

The ids come out as ``TokenIds`` (a u32 array, ``dynamo.llm.token_ids``): every piece is kept as
one, so a prompt is joined from its pieces by copying their bytes, with no Python object per token.
Pieces of at least ``min_chars`` characters are kept in an LRU bounded by ``max_bytes`` (the text
plus 4 bytes a token), found by a fingerprint (length and ~100 characters sampled along the piece)
and then compared whole: a 130 kB piece is not hashed in full on every request. Pieces whose
fingerprints agree share a bucket of at most ``BUCKET`` texts. Pieces of at most ``SHORT_CHARS``
(the template's own words between added tokens: ``assistant\n``, ``\n``; each a tokenizer call of
3-6 us, several a prompt) are remembered in a small table of at most ``SHORT_ENTRIES``; pieces in
between are encoded every time, together with the misses. ``stats`` counts hits, misses and bytes
for the frontend's metrics.

``encode(text, budget)`` raises ``EncodeTooLong`` instead of encoding when the characters not in
the cache exceed what is left of ``budget`` (an ``EncodeBudget``, spent across calls): the caller
(preprocessing on the event loop) then encodes in a thread, where the tokenizer runs without the
GIL, while a cached prompt costs no thread hop.

Pieces to encode that are ASCII go through ``AsciiEncoder`` (``dynamo.llm.ascii_encoder``: the same
ids, a fraction of the CPU) when the tokenizer qualifies, and cost a budget a quarter of a
character each; text with other characters is cut (``AsciiEncoder.segments``) so that only the
words around them go to the tokenizer. ``learn_slices`` encodes refused pieces a slice at a time
and keeps them: a caller on the event loop hands the loop back between slices, then encodes the
prompt from here.
"""

from __future__ import annotations

import json
import re
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from tokenizers import Tokenizer

from dynamo.llm.ascii_encoder import AsciiEncoder
from dynamo.llm.token_ids import TYPECODE, TokenIds

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MIN_CHARS = 256
SERIAL_CHARS = 2048  # at most this much text to encode: ``encode`` per piece, no batch call
SHORT_CHARS = 32  # pieces this short (``assistant\n``, ``\n``) are remembered apart, by count
SHORT_ENTRIES = 4096  # at most this many; emptied when full (the template's words come back at once)
BUCKET = 4  # texts kept under one fingerprint (the oldest goes first)
# ASCII text costs the budget a quarter of a character: ``AsciiEncoder`` spends 4-7x less CPU a
# character than the tokenizer (benchmarks/results/profiles/README.md, change 20).
ASCII_COST_DIVISOR = 4
LEARN_MAX_CHARS = 1 << 19  # longer pieces go to a thread (``Digits`` cuts a piece in one C call: ~6 ms)
LEARN_FOREIGN_CHARS = 4096  # at most this much non-ASCII text is learnt on the loop (~1 ms of tokenizer)


# Set in threads beside an event loop (``tokenizer_only``): there the tokenizer, which releases the
# GIL, encodes everything; ``AsciiEncoder`` is Python and would hold the GIL the loop needs.
_TOKENIZER_ONLY: ContextVar[bool] = ContextVar("tokenizer_only", default=False)


@contextmanager
def tokenizer_only() -> Iterator[None]:
    """Within this block the cache encodes what it does not hold with the tokenizer alone (for a
    thread beside the event loop: the tokenizer runs without the GIL)."""
    token = _TOKENIZER_ONLY.set(True)
    try:
        yield
    finally:
        _TOKENIZER_ONLY.reset(token)


class EncodeTooLong(Exception):
    """More text to encode than the ``EncodeBudget`` has left: nothing was encoded or counted.
    ``texts``: the pieces that were to be encoded (``PrefixTokenCache.learn_slices`` takes them)."""

    def __init__(self, chars: int, texts: list[str] | None = None) -> None:
        super().__init__(f"{chars} characters to encode")
        self.chars = chars
        self.texts = texts or []


class EncodeBudget:
    """Characters that may still be encoded (not found in a cache) by the calls that share it."""

    __slots__ = ("chars",)

    def __init__(self, chars: int) -> None:
        self.chars = chars

    def spend(self, chars: int) -> None:
        """Take ``chars`` from the budget, or raise ``EncodeTooLong`` (taking nothing) if that is more."""
        if chars > self.chars:
            raise EncodeTooLong(chars)
        self.chars -= chars


@dataclass(slots=True)
class CacheStats:
    """Counters since start (pieces looked up, found, not found) and the bytes held now."""

    hits: int = 0
    misses: int = 0
    cached_tokens: int = 0  # token ids served from the cache instead of encoded
    uncached_tokens: int = 0  # token ids encoded (misses and pieces too short to keep)
    bytes: int = 0
    entries: int = 0
    evictions: int = 0


class PrefixTokenCache:
    """Encodes text as ``tokenizer.encode(text, add_special_tokens=False).ids`` would, reusing the
    ids of long pieces seen before. Thread-safe (large prompts are preprocessed off the loop)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        special_ids: dict[str, int],
        max_bytes: int = DEFAULT_MAX_BYTES,
        min_chars: int = DEFAULT_MIN_CHARS,
        ascii_encoder: AsciiEncoder | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._ascii = ascii_encoder
        self._special_ids = special_ids
        # Longest first, so that one added token that is a prefix of another never wins.
        alternatives = "|".join(re.escape(t) for t in sorted(special_ids, key=len, reverse=True))
        self._split = re.compile(f"({alternatives})")
        # All added tokens start with one character (``<`` for most tokenizers): ``split`` finds
        # it with ``str.find`` and matches there, instead of the regex trying every position.
        firsts = {t[0] for t in special_ids if t}
        self._lead = firsts.pop() if len(firsts) == 1 and "" not in special_ids else None
        self._max_bytes = max_bytes
        self._min_chars = min_chars
        self._entries: OrderedDict[tuple[int, str], list[tuple[str, TokenIds]]] = OrderedDict()
        self._short: dict[str, TokenIds] = {}  # the template's words between added tokens
        self._learnt: set[tuple[int, str]] = set()  # fingerprints kept by ``learn_slices``, not yet used
        self._lock = threading.Lock()
        self.stats = CacheStats()

    @classmethod
    def for_tokenizer(
        cls, tokenizer: Tokenizer, max_bytes: int = DEFAULT_MAX_BYTES, min_chars: int = DEFAULT_MIN_CHARS
    ) -> PrefixTokenCache | None:
        """A cache for ``tokenizer``, or ``None`` when piecewise encoding would not be exact for it
        (see the module docstring) or ``max_bytes`` is 0."""
        if max_bytes <= 0:
            return None
        spec = json.loads(tokenizer.to_str())
        if spec.get("normalizer") is not None:
            return None
        special_ids: dict[str, int] = {}
        for token in spec.get("added_tokens") or []:
            if (
                token.get("lstrip")
                or token.get("rstrip")
                or token.get("normalized")
                or token.get("single_word")
            ):
                return None
            special_ids[token["content"]] = token["id"]
        if not special_ids:
            return None
        return cls(tokenizer, special_ids, max_bytes, min_chars, AsciiEncoder.for_tokenizer(tokenizer, spec))

    def encode(self, text: str, budget: EncodeBudget | None = None) -> TokenIds:
        """The token ids of ``text`` (no special tokens added around it); ``EncodeTooLong`` when
        more of it would be encoded rather than found than ``budget`` (if given) has left."""
        parts = self.split(text)
        # parts alternates: text, added token, text, ..., text
        found: list[TokenIds | None] = [None] * len(parts)
        to_encode: list[int] = []
        hits = cached = uncached = 0
        short = self._short
        with self._lock:
            for i in range(0, len(parts), 2):
                part = parts[i]
                if not part:
                    continue
                if len(part) >= self._min_chars:
                    fp = _fingerprint(part)
                    bucket = self._entries.get(fp)
                    if bucket is not None:
                        entry = _find(bucket, part)
                        if entry is not None:
                            self._entries.move_to_end(fp)
                            found[i] = entry
                            if fp in self._learnt:  # encoded for this very prompt: not a hit
                                self._learnt.discard(fp)
                                uncached += len(entry)
                            else:
                                hits += 1
                                cached += len(entry)
                            continue
                elif len(part) <= SHORT_CHARS and (ids := short.get(part)) is not None:
                    found[i] = ids
                    continue
                to_encode.append(i)
        if to_encode:
            texts = [parts[i] for i in to_encode]
            misses = []
            for i, fresh in zip(to_encode, self._encode_all(texts, budget), strict=True):
                uncached += len(fresh)
                found[i] = fresh
                if len(parts[i]) >= self._min_chars:
                    misses.append((parts[i], fresh))
                elif len(parts[i]) <= SHORT_CHARS:
                    if len(short) >= SHORT_ENTRIES:
                        short.clear()
                    short[parts[i]] = fresh
            if misses:
                self._keep(misses)
        with self._lock:
            self.stats.hits += hits
            self.stats.cached_tokens += cached
            self.stats.uncached_tokens += uncached
        out = array(TYPECODE)
        special = self._special_ids
        for i, part in enumerate(parts):
            if i % 2:
                out.append(special[part])
            else:
                piece = found[i]
                if piece is not None:
                    out.extend(piece)  # same type: a copy of its bytes
        return out

    def learnable(self, texts: list[str]) -> bool:
        """Whether ``learn_slices`` would keep any of ``texts`` (at least ``min_chars`` long) and can
        encode those on the event loop: ASCII, or cut into ASCII pieces and at most
        ``LEARN_FOREIGN_CHARS`` in all of pieces for the tokenizer."""
        long = [t for t in texts if len(t) >= self._min_chars]
        if self._ascii is None or not long or any(len(t) > LEARN_MAX_CHARS for t in long):
            return False
        foreign = sum(len(piece) for t in long for piece, ascii in self._pieces(t) if not ascii)
        return foreign <= LEARN_FOREIGN_CHARS

    def learn_slices(self, texts: list[str]) -> Iterator[None]:
        """Encodes those of ``texts`` long enough to keep (``learnable``) slice by slice, yielding
        between slices, and keeps them: a caller on the event loop hands it back at each yield,
        then finds them here when it encodes their prompt (the shorter ones are encoded then)."""
        assert self._ascii is not None
        for text in texts:
            if len(text) < self._min_chars:
                continue
            ids = array(TYPECODE)
            for piece, ascii in self._pieces(text):
                if ascii:
                    for part in self._ascii.encode_slices(piece):
                        ids += part
                        yield
                else:
                    [piece_ids] = self._tokenize([piece])
                    ids += piece_ids
            self._keep([(text, ids)])
            with self._lock:
                if len(self._learnt) >= SHORT_ENTRIES:
                    self._learnt.clear()
                self._learnt.add(_fingerprint(text))

    def _pieces(self, text: str) -> list[tuple[str, bool]]:
        """``text`` as pieces for ``AsciiEncoder`` (True) and for the tokenizer (False)."""
        if self._ascii is None or _TOKENIZER_ONLY.get():
            return [(text, False)]
        if text.isascii():
            return [(text, True)]
        return self._ascii.segments(text)

    def _encode_all(self, texts: list[str], budget: EncodeBudget | None) -> list[TokenIds]:
        """Fresh ids of each of ``texts``: ASCII pieces by ``AsciiEncoder``, the rest by the
        tokenizer. ``budget`` is spent first (a quarter of a character for ASCII): ``EncodeTooLong``
        with ``texts`` when it does not cover them, before anything is encoded."""
        plans = [self._pieces(t) for t in texts]
        if budget is not None:
            cost = sum(
                len(piece) // ASCII_COST_DIVISOR if ascii else len(piece)
                for plan in plans
                for piece, ascii in plan
            )
            try:
                budget.spend(cost)
            except EncodeTooLong as exc:
                raise EncodeTooLong(exc.chars, texts) from None
        ascii_encoder = self._ascii
        parts: list[list[TokenIds | None]] = []
        others: list[str] = []  # the pieces for the tokenizer, in order
        for plan in plans:
            ids: list[TokenIds | None] = []
            for piece, ascii in plan:
                if ascii and ascii_encoder is not None:
                    ids.append(ascii_encoder.encode(piece))
                else:
                    ids.append(None)
                    others.append(piece)
            parts.append(ids)
        encoded = iter(self._tokenize(others))
        out = []
        for ids in parts:
            joined = array(TYPECODE)
            for piece_ids in ids:
                joined += piece_ids if piece_ids is not None else next(encoded)
            out.append(joined)
        return out

    def _tokenize(self, texts: list[str]) -> list[TokenIds]:
        """The tokenizer's ids of each of ``texts``."""
        if not texts:
            return []
        tokenizer = self._tokenizer
        if sum(map(len, texts)) <= SERIAL_CHARS:
            # Short pieces: one by one on this thread; a batch call hands them to the tokenizer's
            # worker threads and waits.
            encoded = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
        else:
            # ``_fast``: the same ids without the offsets (a quarter less CPU for a long prompt).
            encoded = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return [array(TYPECODE, enc.ids) for enc in encoded]

    def split(self, text: str) -> list[str]:
        """``text`` cut at its added tokens: text, added token, text, ..., text (what
        ``re.split`` with the alternation of the added tokens, longest first, returns)."""
        lead = self._lead
        if lead is None:
            return self._split.split(text)
        match = self._split.match
        parts: list[str] = []
        start = 0
        pos = text.find(lead)
        while pos != -1:
            m = match(text, pos)
            if m is None:
                pos = text.find(lead, pos + 1)
                continue
            end = m.end()
            parts += (text[start:pos], m.group())
            start = end
            pos = text.find(lead, end)
        parts.append(text[start:])
        return parts

    def pieces(self) -> list[tuple[str, TokenIds]]:
        """Every kept piece and its ids, least recently used first (for tests and debugging)."""
        with self._lock:
            return [entry for bucket in self._entries.values() for entry in bucket]

    def _keep(self, pieces: list[tuple[str, TokenIds]]) -> None:
        with self._lock:
            stats = self.stats
            entries = self._entries
            for text, ids in pieces:
                stats.misses += 1
                size = _size(text, ids)
                if size > self._max_bytes:
                    continue
                fp = _fingerprint(text)
                bucket = entries.get(fp)
                if bucket is None:
                    entries[fp] = [(text, ids)]
                else:
                    if _find(bucket, text) is not None:
                        continue
                    if len(bucket) >= BUCKET:
                        old_text, old_ids = bucket.pop(0)
                        stats.bytes -= _size(old_text, old_ids)
                        stats.evictions += 1
                        stats.entries -= 1
                    bucket.append((text, ids))
                    entries.move_to_end(fp)
                stats.bytes += size
                stats.entries += 1
            self._trim()

    def _trim(self) -> None:
        """Evict least recently used entries until the bytes fit (under the lock)."""
        stats = self.stats
        entries = self._entries
        while stats.bytes > self._max_bytes and entries:
            bucket = next(iter(entries.values()))
            old_text, old_ids = bucket.pop(0)
            if not bucket:
                entries.popitem(last=False)
            stats.bytes -= _size(old_text, old_ids)
            stats.evictions += 1
            stats.entries -= 1


def _find(bucket: list[tuple[str, TokenIds]], text: str) -> TokenIds | None:
    """The ids kept for ``text`` in its fingerprint's bucket, if it is there."""
    return next((ids for t, ids in bucket if t == text), None)


def _fingerprint(text: str) -> tuple[int, str]:
    """The length and ~100 characters of ``text``: its ends and a sample along it (a few
    microseconds for any length, where hashing all of a 130 kB piece takes ~35)."""
    n = len(text)
    return n, text[:16] + text[:: n // 64 + 1] + text[-16:]


def _size(text: str, ids: TokenIds) -> int:
    """Bytes an entry counts: the text, plus 4 bytes a token."""
    return len(text) + ids.itemsize * len(ids)
