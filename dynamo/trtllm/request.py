"""Our ``PreprocessedRequest`` -> the arguments of TensorRT-LLM's ``LLM.generate_async``.

Journey: request plane -> worker handler -> **here** (sampling and stop options as
``SamplingParams`` keywords; disaggregation state as ``DisaggregatedParams``) ->
``llm.generate_async(token_ids, sampling_params=..., streaming=True, disaggregated_params=...)``.

Decoding options: ``guided`` becomes ``GuidedDecodingParams`` (``json`` schema, ``json_object``,
``regex``, ``grammar``; ``choice`` as a regex alternation, TensorRT-LLM having no choice constraint)
and ``logit_bias`` an ``embedding_bias`` tensor over the vocabulary, as TensorRT-LLM's own OpenAI
server builds it. Prompt logprobs are not mapped (the engine does not declare them).

Disaggregation: a prefill worker runs the prompt as a ``context_only`` request; TensorRT-LLM
answers with ``DisaggregatedParams`` (``ctx_request_id``, ``opaque_state`` bytes, the first
token, ...) that travel to the decode worker in ``kv_transfer_params`` (``opaque_state`` as
base64), where they come back as a ``generation_only`` request whose KV the cache transceiver
pulls from the prefill worker.
"""

from __future__ import annotations

import base64
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from dynamo.llm.protocols import GuidedDecoding, PreprocessedRequest
from dynamo.worker.sampling import choice_regex, given_options, max_new_tokens, stop_token_ids

_PASSTHROUGH = (
    "temperature",
    "top_p",
    "min_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)
# kv_transfer_params key that marks TensorRT-LLM's parameters (present on every prefill answer).
CTX_REQUEST_ID = "ctx_request_id"


def build_sampling_kwargs(
    req: PreprocessedRequest, *, prefill: bool = False, max_seq_len: int | None = None
) -> dict[str, Any]:
    """``SamplingParams`` keywords for ``req``.

    The first EOS id of the model card is ``end_id`` (TensorRT-LLM needs one when it has no
    tokenizer), the others join ``stop_token_ids``. Without ``max_tokens`` the request may fill
    ``max_seq_len``. A prefill makes one token. ``top_k`` <= 0 means "off".
    """
    s, stop = req.sampling, req.stop
    kwargs: dict[str, Any] = {"detokenize": False, **given_options(s, _PASSTHROUGH)}
    max_tokens = 1 if prefill else max_new_tokens(req, max_seq_len)
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    if stop.min_tokens and not prefill:
        kwargs["min_tokens"] = stop.min_tokens
    eos = list(req.eos_token_ids)
    if eos:
        kwargs["end_id"] = eos[0]
        kwargs["pad_id"] = eos[0]
    if stop.ignore_eos:
        kwargs["ignore_eos"] = True
    stop_ids = stop_token_ids(req, eos[1:])
    if stop_ids:
        kwargs["stop_token_ids"] = stop_ids
    if s.top_k is not None and s.top_k > 0:
        kwargs["top_k"] = s.top_k
    if req.output.logprobs is not None:
        if req.output.logprobs < 0:
            raise ValueError("logprobs must be >= 0")
        kwargs["logprobs"] = max(1, req.output.logprobs)  # TensorRT-LLM counts the sampled token
    return kwargs


def guided_decoding(guided: GuidedDecoding, factory: Callable[..., Any]) -> Any:
    """``guided`` as TensorRT-LLM's ``GuidedDecodingParams`` (built by ``factory``)."""
    kind = guided.kind()
    if kind == "json":
        return factory(json=guided.json)
    if kind == "json_object":
        return factory(json_object=True)
    if kind == "regex":
        return factory(regex=guided.regex)
    if kind == "choice":
        return factory(regex=choice_regex(guided.choice or []))
    return factory(grammar=guided.grammar)


def embedding_bias(logit_bias: dict[int, float], vocab_size: int | None) -> Any:
    """``logit_bias`` as the float32 ``[vocab_size]`` tensor TensorRT-LLM adds to the logits
    (``SamplingParams.embedding_bias``); ``ValueError`` for ids outside the vocabulary."""
    if not vocab_size:
        raise ValueError("logit_bias needs the model's vocabulary size, which this worker could not read")
    outside = sorted(t for t in logit_bias if not 0 <= t < vocab_size)
    if outside:
        raise ValueError(f"logit_bias token ids {outside[:5]} are outside the vocabulary [0, {vocab_size})")
    import torch

    bias = torch.zeros(vocab_size, dtype=torch.float32)
    for token, value in logit_bias.items():
        bias[token] = float(value)
    return bias


def decoding_kwargs(
    req: PreprocessedRequest, *, guided_factory: Callable[..., Any] | None, vocab_size: int | None
) -> dict[str, Any]:
    """The ``SamplingParams`` keywords for ``req``'s constraint and ``logit_bias`` (none when unset).
    ``guided_factory`` None: no guided decoder. ``ValueError`` for what cannot be honoured, prompt
    logprobs included, rather than generating as if it had not been asked."""
    if req.output.prompt_logprobs is not None:
        raise ValueError("prompt logprobs are not available from this TensorRT-LLM worker")
    kwargs: dict[str, Any] = {}
    if req.guided is not None:
        if guided_factory is None:
            raise ValueError(
                "structured outputs need TensorRT-LLM's guided decoder: set guided_decoding_backend"
            )
        kwargs["guided_decoding"] = guided_decoding(req.guided, guided_factory)
    if req.sampling.logit_bias:
        kwargs["embedding_bias"] = embedding_bias(req.sampling.logit_bias, vocab_size)
    return kwargs


def _fields_of(params: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    if hasattr(params, "model_dump"):
        return dict(params.model_dump())
    return dict(vars(params))


def params_to_wire(params: Any) -> dict[str, Any]:
    """A prefill's ``DisaggregatedParams`` -> msgpack-safe ``kv_transfer_params`` (no tensors, no
    multimodal handles: text only)."""
    wire: dict[str, Any] = {}
    for name, value in _fields_of(params).items():
        if value is None or name.startswith("multimodal"):
            continue
        if name == "opaque_state" and isinstance(value, bytes | bytearray):
            value = base64.b64encode(bytes(value)).decode()
        elif isinstance(value, int | float | str | bool):
            pass
        elif isinstance(value, list | tuple) and all(isinstance(v, int | float | str) for v in value):
            value = list(value)
        else:
            continue  # an object we cannot carry (the decode side does without it)
        wire[name] = value
    return wire


def is_trtllm_params(params: dict[str, Any] | None) -> bool:
    """Whether ``kv_transfer_params`` came from a TensorRT-LLM prefill worker."""
    return bool(params) and CTX_REQUEST_ID in (params or {})


def params_from_wire(params: dict[str, Any], factory: Callable[..., Any]) -> Any:
    """``kv_transfer_params`` from a prefill worker -> ``DisaggregatedParams`` of a
    ``generation_only`` request (only the fields this TensorRT-LLM knows)."""
    known = set(inspect.signature(factory).parameters)
    kwargs = {k: v for k, v in params.items() if k in known}
    if isinstance(kwargs.get("opaque_state"), str):
        kwargs["opaque_state"] = base64.b64decode(kwargs["opaque_state"])
    kwargs["request_type"] = "generation_only"
    return factory(**kwargs)
