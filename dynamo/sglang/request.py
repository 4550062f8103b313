"""Our ``PreprocessedRequest`` -> the arguments of SGLang's ``Engine.async_generate``.

Journey: request plane -> worker handler -> **here** (sampling and stop options in SGLang's names)
-> ``async_generate(input_ids=..., sampling_params=..., stream=True, rid=...)`` -> SGLang.

Constraints (``guided``) become SGLang's ``json_schema`` (JSON text; ``json_object`` is the schema
``{"type": "object"}``, as SGLang's own server sends it), ``regex`` (``choice`` too, as an
alternation of the escaped strings) or ``ebnf`` (SGLang's grammar backend reads GBNF-style EBNF;
a grammar it cannot compile ends the request with a 400-style abort). ``logit_bias`` keys become
strings as SGLang's sampling params expect. Prompt logprobs ask SGLang to return the input's
logprobs from position 0 (``logprob_start_len=0``).

Disaggregation: a prefill worker and the decode worker that continues the request meet through
SGLang's bootstrap server; the triple ``bootstrap_host``/``bootstrap_port``/``bootstrap_room``
travels in ``kv_transfer_params`` (``Bootstrap``).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from dynamo.llm.protocols import GuidedDecoding, PreprocessedRequest
from dynamo.worker.sampling import choice_regex, given_options, max_new_tokens, stop_token_ids

_PASSTHROUGH = (
    "temperature",
    "top_p",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)


def build_sampling_params(req: PreprocessedRequest, *, context_length: int | None = None) -> dict[str, Any]:
    """SGLang ``sampling_params`` for ``req``.

    Without ``max_tokens`` the request may fill the context (SGLang's own default is 128 new
    tokens). EOS ids from the model card join the stop token ids unless ``ignore_eos``; stop
    *strings* are the frontend's job. ``top_k`` <= 0 means "off" (SGLang: -1); ``seed`` is SGLang's
    ``sampling_seed``.
    """
    s, stop = req.sampling, req.stop
    params = given_options(s, _PASSTHROUGH)
    max_new = max_new_tokens(req, context_length)
    if max_new is not None:
        params["max_new_tokens"] = max_new
    if stop.min_tokens:
        params["min_new_tokens"] = stop.min_tokens
    if stop.ignore_eos:
        params["ignore_eos"] = True
    stop_ids = stop_token_ids(req)
    if stop_ids:
        params["stop_token_ids"] = stop_ids
    if s.top_k is not None:
        params["top_k"] = s.top_k if s.top_k > 0 else -1
    if s.seed is not None:
        params["sampling_seed"] = s.seed
    if s.logit_bias:
        params["logit_bias"] = {str(token): float(bias) for token, bias in s.logit_bias.items()}
    if req.guided is not None:
        params.update(guided_params(req.guided))
    return params


def guided_params(guided: GuidedDecoding) -> dict[str, Any]:
    """The ``sampling_params`` entry that constrains SGLang's output to ``guided``."""
    kind = guided.kind()
    if kind == "json":
        return {"json_schema": json.dumps(guided.json)}
    if kind == "json_object":
        return {"json_schema": json.dumps({"type": "object"})}
    if kind == "regex":
        return {"regex": guided.regex}
    if kind == "choice":
        return {"regex": choice_regex(guided.choice or [])}
    return {"ebnf": guided.grammar}


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """Where a decode worker fetches a prefill worker's KV: SGLang's bootstrap server and room."""

    host: str
    port: int
    room: int

    def to_params(self) -> dict[str, Any]:
        """As ``kv_transfer_params`` for the decode side."""
        return {"bootstrap_host": self.host, "bootstrap_port": self.port, "bootstrap_room": self.room}

    def to_kwargs(self) -> dict[str, Any]:
        """As ``async_generate`` keyword arguments."""
        return {"bootstrap_host": self.host, "bootstrap_port": self.port, "bootstrap_room": self.room}

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> Bootstrap | None:
        """The triple in ``kv_transfer_params``; None when it is absent or incomplete."""
        if not params:
            return None
        try:
            return cls(
                str(params["bootstrap_host"]), int(params["bootstrap_port"]), int(params["bootstrap_room"])
            )
        except (KeyError, TypeError, ValueError):
            return None


def new_bootstrap_room() -> int:
    """A random 63-bit room: one per disaggregated request."""
    return secrets.randbits(63)


def generate_kwargs(
    req: PreprocessedRequest,
    rid: str,
    *,
    context_length: int | None = None,
    bootstrap: Bootstrap | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``async_generate`` for ``req`` (raises ``ValueError`` on bad options)."""
    kwargs: dict[str, Any] = {
        "input_ids": list(req.token_ids),
        "sampling_params": build_sampling_params(req, context_length=context_length),
        "stream": True,
        "rid": rid,
    }
    asked = [n for n in (req.output.logprobs, req.output.prompt_logprobs) if n is not None]
    if any(n < 0 for n in asked):
        raise ValueError("logprobs must be >= 0")
    if asked:
        kwargs["return_logprob"] = True
        kwargs["top_logprobs_num"] = max(asked)  # one count for both: each side keeps its own
    if req.output.prompt_logprobs is not None:
        kwargs["logprob_start_len"] = 0
    if bootstrap is not None:
        kwargs.update(bootstrap.to_kwargs())
    return kwargs
