"""Internal wire types between the frontend (preprocessor/router) and engine workers.

Journey: HTTP -> preprocess (OpenAI request -> ``PreprocessedRequest``) -> route -> request plane
-> engine -> ``EngineOutput`` chunks back -> detokenize -> SSE.

These are ``msgspec.Struct`` types: they cross the request plane as msgpack maps and are cheap to
build and convert on the token path (no pydantic here). Unknown fields are ignored on decode so
newer frontends and older workers interoperate. A prompt's ``token_ids`` are ``TokenIds`` (a u32
array, sent as bytes; ``dynamo.llm.token_ids``); a list given instead becomes one.
"""

from __future__ import annotations

from typing import Any

import msgspec

from dynamo.llm.token_ids import TokenIds, as_token_ids, dec_hook
from dynamo.runtime.request_plane.framing import encode_hook


class SamplingOptions(msgspec.Struct, omit_defaults=True):
    """Sampling knobs, already validated by the frontend."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[int, float] | None = None  # token id -> bias added to its logit, in [-100, 100]


class StopConditions(msgspec.Struct, omit_defaults=True):
    """What ends generation on the engine side. Stop *strings* are applied by the frontend's
    detokenizer, which closes the stream (cancelling the engine request) when one matches."""

    max_tokens: int | None = None
    min_tokens: int = 0
    stop_token_ids: list[int] = []
    ignore_eos: bool = False


class OutputOptions(msgspec.Struct, omit_defaults=True):
    """Extra outputs the engine should return."""

    logprobs: int | None = None  # number of top logprobs per token; 0 = only the sampled token's
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (sent on the first chunk)


class GuidedDecoding(msgspec.Struct, omit_defaults=True):
    """Constrained decoding: the output must match exactly one of these (the engine's own guided
    decoding enforces it). Filled from ``response_format``, the ``structured_outputs`` extension and
    ``tool_choice`` ``required`` / a named function (their JSON schema)."""

    json: dict[str, Any] | None = None  # a JSON schema
    json_object: bool = False  # any JSON object
    regex: str | None = None
    choice: list[str] | None = None  # exactly one of these strings
    grammar: str | None = None  # an EBNF (GBNF/Lark as the engine accepts) grammar

    def kind(self) -> str:
        """Which constraint is set (``json``, ``json_object``, ``regex``, ``choice``, ``grammar``)."""
        if self.json is not None:
            return "json"
        if self.json_object:
            return "json_object"
        if self.regex is not None:
            return "regex"
        if self.choice is not None:
            return "choice"
        return "grammar"


class RemotePrefill(msgspec.Struct, omit_defaults=True):
    """decode_first: the prefill worker a decode worker should call before decoding."""

    address: str  # request-plane address of the prefill worker
    handler: str  # its generate handler's name


class PreprocessedRequest(msgspec.Struct, omit_defaults=True):
    """A tokenized request as sent to an engine worker."""

    request_id: str
    model: str
    token_ids: TokenIds
    sampling: SamplingOptions = msgspec.field(default_factory=SamplingOptions)
    stop: StopConditions = msgspec.field(default_factory=StopConditions)
    output: OutputOptions = msgspec.field(default_factory=OutputOptions)
    guided: GuidedDecoding | None = None
    eos_token_ids: list[int] = []
    # Disaggregation: the engine's own parameters handed from a prefill worker to a decode worker
    # (vLLM's NIXL params, SGLang's bootstrap room, TensorRT-LLM's DisaggregatedParams): opaque here.
    kv_transfer_params: dict[str, Any] | None = None
    # Disaggregation, decode_first: the prefill worker the decode worker calls itself.
    remote_prefill: RemotePrefill | None = None
    # Disaggregation: run this request as a prefill-only request (one token, keep KV for transfer).
    prefill_only: bool = False
    annotations: list[str] = []

    def __post_init__(self) -> None:
        self.token_ids = as_token_ids(self.token_ids)  # the same object when it already is one


class TokenLogprob(msgspec.Struct, array_like=True):
    """Log probability of one token; ``top`` lists (token_id, logprob) alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = []


class EngineOutput(msgspec.Struct, omit_defaults=True):
    """One streamed chunk from an engine: new token ids since the previous chunk.

    ``finish_reason`` is set on the last chunk: ``stop`` (EOS or stop token), ``length``
    (max_tokens or context), ``cancelled`` or ``error``. ``cached_tokens`` and ``prompt_tokens``
    are reported once, on the first chunk, when the engine knows them. An ``error`` chunk whose
    ``error_code`` is ``invalid_request`` is the request's fault (a grammar or schema the engine
    cannot compile, a value it refuses): the frontend answers 400 with ``error`` as the message.
    """

    token_ids: list[int] = []
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[TokenLogprob] | None = None
    # First chunk only, when asked: one entry per prompt token, None for the first (no context).
    prompt_logprobs: list[TokenLogprob | None] | None = None
    cached_tokens: int | None = None
    prompt_tokens: int | None = None
    kv_transfer_params: dict[str, Any] | None = None
    # First chunk of a disaggregated request that a decode worker prefilled locally instead: why.
    disagg_fallback: str | None = None
    error: str | None = None
    error_code: str | None = None  # with finish_reason "error": ERROR_INVALID_REQUEST, else unset


FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"
ERROR_INVALID_REQUEST = "invalid_request"  # ``error_code``: the engine refused the request's content


_request_decoder = msgspec.msgpack.Decoder(PreprocessedRequest, dec_hook=dec_hook)
_request_encoder = msgspec.msgpack.Encoder(enc_hook=encode_hook)


def request_to_wire(request: PreprocessedRequest) -> bytes:
    """A ``PreprocessedRequest`` as msgpack, as the request plane sends it (token ids as bytes)."""
    return _request_encoder.encode(request)


def request_from_wire(payload: Any) -> PreprocessedRequest:
    """Build a ``PreprocessedRequest`` from what the request plane delivered (builtins or bytes)."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return _request_decoder.decode(payload)
    return msgspec.convert(payload, PreprocessedRequest, dec_hook=dec_hook)


def output_from_wire(payload: Any) -> EngineOutput:
    """Build an ``EngineOutput`` from a decoded request-plane item."""
    return msgspec.convert(payload, EngineOutput)
