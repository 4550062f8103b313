"""What every engine's request mapping reads the same way from a ``PreprocessedRequest``.

Journey: request plane -> worker handler -> the engine adapter's mapping (``dynamo.<engine>.request``)
-> **these helpers** for the parts every engine agrees on: which token ids stop the request, how
many new tokens it may make when the client gave no limit, which sampling options it set, and a
``choice`` constraint as a regular expression for engines without a choice constraint of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dynamo.llm.protocols import PreprocessedRequest


def stop_token_ids(req: PreprocessedRequest, eos_token_ids: Sequence[int] | None = None) -> list[int]:
    """The request's stop token ids, then the model's EOS ids (``eos_token_ids``, default the
    card's) not among them; no EOS ids with ``ignore_eos``."""
    ids = list(req.stop.stop_token_ids)
    if not req.stop.ignore_eos:
        eos = req.eos_token_ids if eos_token_ids is None else eos_token_ids
        ids += [t for t in eos if t not in ids]
    return ids


def max_new_tokens(req: PreprocessedRequest, context_length: int | None) -> int | None:
    """``max_tokens`` as given, else what fills the context after the prompt (at least 1); None
    when neither is known (the engine's own default then)."""
    if req.stop.max_tokens is not None:
        return req.stop.max_tokens
    if context_length:
        return max(1, context_length - len(req.token_ids))
    return None


def given_options(options: object, names: Iterable[str]) -> dict[str, Any]:
    """The attributes among ``names`` that are set (not None): the options a request gave."""
    return {name: value for name in names if (value := getattr(options, name)) is not None}


# Characters with a meaning in the regular expressions the engines' grammar backends read.
_REGEX_SPECIAL = frozenset("\\.^$*+?{}[]|()/")


def choice_regex(choices: Sequence[str]) -> str:
    """A regex matching exactly one of ``choices`` (each escaped); ``ValueError`` when empty."""
    if not choices:
        raise ValueError("choice must list at least one string")
    escaped = ("".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in choice) for choice in choices)
    return "(" + "|".join(escaped) + ")"
