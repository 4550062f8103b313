"""OpenAI protocol types (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``): requests
and their validation, and the responses' shapes.

Journey: **HTTP body -> parse + validate here** -> preprocess (``dynamo.llm.preprocessor``) -> route
-> request plane -> engine -> ... -> response (shaped as the response types below). Pydantic lives
only at this edge: once a request is parsed, the preprocessor turns it into msgspec structs and
nothing on the token path touches pydantic. The frontend's ``/openapi.json`` is generated from
these types.

``parse_chat_request`` / ``parse_completion_request`` are the entry points: they never raise a
pydantic error, only ``RequestError(400, param=<field path>)``. Unknown fields are ignored.
Extensions: vLLM-style top-level ``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``,
``min_tokens`` and Dynamo's ``nvext`` object; when both are given the top-level value wins.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dynamo.llm.errors import RequestError, bad_request

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
MAX_LOGPROBS = 20
_M = TypeVar("_M", bound=BaseModel)

Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=-1)]  # -1 and 0 both mean "disabled", as in vLLM
MinP = Annotated[float, Field(ge=0.0, le=1.0)]
RepetitionPenalty = Annotated[float, Field(gt=0.0)]
Seed = Annotated[int, Field(ge=_INT64_MIN, le=_INT64_MAX)]
MaxTokens = Annotated[int, Field(ge=1)]
MinTokens = Annotated[int, Field(ge=0)]
TokenId = Annotated[int, Field(ge=0)]


class _Model(BaseModel):
    # strict: no silent "0.5" -> 0.5 or "true" -> True coercions (ints are still accepted as floats).
    model_config = ConfigDict(extra="ignore", strict=True)


class NvExt(_Model):
    """Dynamo extensions (``"nvext": {...}``)."""

    ignore_eos: bool | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    min_tokens: MinTokens | None = None
    greed_sampling: bool | None = None  # true: greedy decoding (temperature 0)
    backend_instance_id: int | str | None = None  # pin the request to one worker instance
    annotations: list[str] | None = None
    use_raw_prompt: bool | None = None  # completions: tokenize the prompt as given, no template
    token_data: list[TokenId] | None = None  # pre-tokenized input; replaces the prompt/messages


class StreamOptions(_Model):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class ContentPart(BaseModel):
    """One part of a message's content list. Only text parts are served (``text``/``input_text``)."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One chat message. Extra keys (``reasoning_content``, ...) are kept for the chat template."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class _SamplingFields(_Model):
    """Fields shared by chat and completion requests."""

    model: str
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    n: int | None = Field(1, json_schema_extra={"minimum": 1, "maximum": 1})  # only n = 1 is served
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    user: str | None = None
    # vLLM-style extras
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    ignore_eos: bool | None = None
    min_tokens: MinTokens | None = None
    stop_token_ids: list[TokenId] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    nvext: NvExt | None = None

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(json_schema_extra={"minItems": 1})
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    @property
    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens``, else the deprecated ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions``. ``max_tokens`` defaults to 16, as in the OpenAI API and vLLM."""

    prompt: str | list[str] | list[TokenId] | list[list[TokenId]] = Field(json_schema_extra={"minItems": 1})
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    max_tokens: MaxTokens | None = 16
    # Accepted for compatibility, served only with their neutral values (the schema says so).
    best_of: int | None = Field(None, json_schema_extra={"minimum": 1, "maximum": 1})
    echo: bool | None = Field(False, json_schema_extra={"not": {"const": True}})
    suffix: str | None = Field(None, json_schema_extra={"maxLength": 0})
    add_special_tokens: bool = True

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


def parse_chat_request(body: bytes | str) -> ChatCompletionRequest:
    """Parse and validate a chat completion body; raises ``RequestError`` (400) on any problem."""
    req = _parse(ChatCompletionRequest, body)
    if not req.messages:
        raise bad_request("'messages' must contain at least one message.", "messages")
    for i, message in enumerate(req.messages):
        _check_message(i, message)
    if req.top_logprobs and not req.logprobs:
        raise bad_request("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")
    if req.continue_final_message and req.add_generation_prompt:
        raise bad_request(
            "'continue_final_message' and 'add_generation_prompt' cannot both be true.",
            "continue_final_message",
        )
    _check_common(
        req, req.requested_max_tokens, "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    )
    return req


def parse_completion_request(body: bytes | str) -> CompletionRequest:
    """Parse and validate a completion body; raises ``RequestError`` (400) on any problem."""
    req = _parse(CompletionRequest, body)
    prompt = req.prompt
    if isinstance(prompt, list):
        if not prompt:
            raise bad_request("'prompt' must not be empty.", "prompt")
        if isinstance(prompt[0], str | list) and len(prompt) != 1:
            raise bad_request("Batched prompts are not supported: send one prompt per request.", "prompt")
        if isinstance(prompt[0], list) and not prompt[0]:
            raise bad_request("'prompt' must not be empty.", "prompt")
    if req.best_of not in (None, 1):
        raise bad_request("Only 'best_of' = 1 is supported.", "best_of")
    if req.echo:
        raise bad_request("'echo' is not supported.", "echo")
    if req.suffix:
        raise bad_request("'suffix' is not supported.", "suffix")
    _check_common(req, req.max_tokens, "max_tokens")
    return req


def _check_message(index: int, message: ChatMessage) -> None:
    content = message.content
    if content is None:
        if message.role == "assistant" and message.tool_calls:
            return
        raise bad_request(f"Message {index} ({message.role}) has no 'content'.", f"messages[{index}].content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if part.type not in ("text", "input_text"):
                raise bad_request(
                    f"Content part type '{part.type}' is not supported; only text parts are.",
                    f"messages[{index}].content[{j}].type",
                )
            if part.text is None:
                raise bad_request("A text content part needs 'text'.", f"messages[{index}].content[{j}].text")


def _check_common(req: _SamplingFields, max_tokens: int | None, max_tokens_param: str) -> None:
    if req.n not in (None, 1):
        raise bad_request("Only 'n' = 1 is supported.", "n")
    if any(not s for s in req.stop_strings()):
        raise bad_request("Stop strings must not be empty.", "stop")
    if req.stream_options is not None and not req.stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    min_tokens = (
        req.min_tokens if req.min_tokens is not None else (req.nvext.min_tokens if req.nvext else None)
    )
    if min_tokens and max_tokens is not None and min_tokens > max_tokens:
        raise bad_request(
            f"'min_tokens' ({min_tokens}) must not exceed '{max_tokens_param}' ({max_tokens}).", "min_tokens"
        )


def _parse(model: type[_M], body: bytes | str) -> _M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _to_request_error(exc) from None


def _to_request_error(exc: ValidationError) -> RequestError:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return bad_request(f"Request body is not valid JSON: {first['msg']}.", code="invalid_json")
    if first["type"] in ("model_type", "model_attributes_type") and not first["loc"]:
        return bad_request("Request body must be a JSON object.", code="invalid_json")
    params = [_loc_to_param(e["loc"]) for e in errors]
    if len(set(params)) == 1 and len(errors) > 1:
        # A union that matched no member, one error per member, all at the same place: say what
        # was expected instead.
        expected = "; or ".join(dict.fromkeys(e["msg"] for e in errors))
        return bad_request(f"Invalid value for '{params[0]}': {expected}.", params[0], code="invalid_value")
    # Otherwise the deepest location is the most specific (the union member that got furthest),
    # and a broken constraint says more than a type mismatch from another member.
    error, param = max(
        zip(errors, params, strict=True),
        key=lambda ep: (len(ep[0]["loc"]), not ep[0]["type"].endswith("_type")),
    )
    if error["type"] == "missing":
        return bad_request(f"Missing required field '{param}'.", param, code="missing_required_parameter")
    return bad_request(f"Invalid value for '{param}': {error['msg']}.", param, code="invalid_value")


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "tuple"}


def _loc_to_param(loc: tuple[int | str, ...]) -> str:
    """``('messages', 0, 'content', 'list[ContentPart]', 1, 'text')`` -> ``messages[0].content[1].text``.

    Pydantic puts union member tags into the location; they are not field names, so they are dropped.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_TAGS or not part.isidentifier() or part[:1].isupper():
            continue
        else:
            out += f".{part}" if out else part
    return out


# --- response types -----------------------------------------------------------------------------
# What the frontend answers, as types: the OpenAPI document (``/openapi.json``) is generated from
# them and the tests hold real responses to them. The frontend does not build responses through
# them (``dynamo.frontend.responses`` writes plain dicts with msgspec, off pydantic's path), so
# a field added there must be added here.


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


FinishReason = Literal["stop", "length"]


class ErrorDetail(_Response):
    message: str
    type: str  # invalid_request_error, not_found_error, rate_limit_error, internal_error, ...
    param: str | None  # the offending field as a path, e.g. "messages[0].content"
    code: str | None


class ErrorResponse(_Response):
    """Every error, with its HTTP status; also a streamed event when a stream fails midway."""

    error: ErrorDetail


class PromptTokensDetails(_Response):
    cached_tokens: int  # prompt tokens the engine found in its prefix cache


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None  # when the engine reports cached tokens


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Response):
    content: list[ChatTokenLogprob]


class CompletionLogprobs(_Response):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]


class AssistantMessage(_Response):
    role: Literal["assistant"]
    content: str


class ChatChoice(_Response):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason


class ChatCompletionResponse(_Response):
    """``POST /v1/chat/completions`` with ``stream: false``."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(_Response):
    role: Literal["assistant"] | None = None  # on the first chunk only
    content: str


class ChatChunkChoice(_Response):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason | None


class ChatCompletionChunk(_Response):
    """One streamed event of ``POST /v1/chat/completions``. ``usage`` is present (null) on every
    chunk when ``stream_options.include_usage`` is true, and filled on a last chunk without choices."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason


class CompletionResponse(_Response):
    """``POST /v1/completions`` with ``stream: false``."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunkChoice(_Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason | None


class CompletionChunk(_Response):
    """One streamed event of ``POST /v1/completions`` (``usage`` as in ``ChatCompletionChunk``)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


class ModelObject(_Response):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Response):
    """``GET /v1/models``: the models with at least one live worker."""

    object: Literal["list"]
    data: list[ModelObject]
