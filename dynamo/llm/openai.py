"""OpenAI protocol types (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``): requests
and their validation, and the responses' shapes.

Journey: **HTTP body -> parse + validate here** -> preprocess (``dynamo.llm.preprocessor``) -> route
-> request plane -> engine -> ... -> response (shaped as the response types below). Pydantic lives
only at this edge: once a request is parsed, the preprocessor turns it into msgspec structs and
nothing on the token path touches pydantic. The frontend's ``/openapi.json`` is generated from
these types.

``parse_chat_request`` / ``parse_completion_request`` are the entry points: they never raise a
pydantic error, only ``RequestError(400, param=<field path>)``. A field we do not serve is refused
with a 400 naming it (never ignored); the limits of the OpenAI API reference are enforced.
Extensions: vLLM-style top-level ``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``,
``min_tokens``, ``structured_outputs`` and Dynamo's ``nvext`` object; when both are given the
top-level value wins. docs/openai-api.md lists every field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dynamo.llm.errors import RequestError, bad_request

# Every integer a request carries to the engine fits the request plane's 64-bit encoding.
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
MAX_LOGPROBS = 20  # chat top_logprobs (OpenAI's limit)
# completions logprobs: OpenAI documents 5, vLLM serves up to 20 (its max_logprobs): so do we,
# a request vLLM's server answers is never refused here.
MAX_COMPLETION_LOGPROBS = 20
MAX_N = 128
MAX_STOP = 4
MAX_TOOLS = 128
MAX_PROMPTS = 2048  # a completions prompt list
MAX_CHOICES = 2048  # prompts x n: each choice is an engine request
# Fields older vLLM releases served that 0.32 replaced: refused with the replacement named.
REPLACED_FIELDS = {
    "guided_json": "structured_outputs.json",
    "guided_regex": "structured_outputs.regex",
    "guided_choice": "structured_outputs.choice",
    "guided_grammar": "structured_outputs.grammar",
    "guided_decoding_backend": "the server's structured-output backend (not per request)",
    "guided_whitespace_pattern": "structured_outputs (without whitespace control)",
    "functions": "tools",
    "function_call": "tool_choice",
}
_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
_M = TypeVar("_M", bound=BaseModel)

Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=-1, le=_INT64_MAX)]  # -1 and 0 both mean "disabled", as in vLLM
MinP = Annotated[float, Field(ge=0.0, le=1.0)]
RepetitionPenalty = Annotated[float, Field(gt=0.0)]
Seed = Annotated[int, Field(ge=_INT64_MIN, le=_INT64_MAX)]
MaxTokens = Annotated[int, Field(ge=1, le=_INT64_MAX)]
MinTokens = Annotated[int, Field(ge=0, le=_INT64_MAX)]
TokenId = Annotated[int, Field(ge=0, le=_INT64_MAX)]


class _Model(BaseModel):
    # strict: no silent "0.5" -> 0.5 or "true" -> True coercions (ints are still accepted as floats).
    # forbid: a field we do not serve is a 400 naming it, never silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


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


class FunctionDefinition(_Model):
    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None


class ChatTool(_Model):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(_Model):
    name: str


class NamedToolChoice(_Model):
    """``{"type": "function", "function": {"name": ...}}``: call exactly this tool."""

    type: Literal["function"]
    function: ToolChoiceFunction


class JsonSchemaFormat(_Model):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Model):
    """vLLM's ``structured_outputs`` extension: exactly one constraint."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    json_: dict[str, Any] | str | None = Field(None, alias="json")  # a JSON schema (or its JSON text)
    json_object: bool | None = None
    regex: str | None = None
    choice: Annotated[list[str], Field(min_length=1)] | None = None
    grammar: str | None = None


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
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = 1
    seed: Seed | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    # vLLM-style extras
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    ignore_eos: bool | None = None
    min_tokens: MinTokens | None = None
    stop_token_ids: list[TokenId] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputs | None = None
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
    tools: Annotated[list[ChatTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Informational (no effect on the output), accepted as OpenAI documents them.
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = (
        Field(None, max_length=16)
    )
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # Served only with their neutral values (the schema says so).
    store: bool | None = Field(None, json_schema_extra={"not": {"const": True}})
    service_tier: Literal["auto", "default"] | None = None
    modalities: list[Literal["text"]] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None  # to the chat template
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
    logprobs: Annotated[int, Field(ge=0, le=MAX_COMPLETION_LOGPROBS)] | None = None
    # 0 only with ``echo`` (prompt scoring: the prompt and its logprobs, nothing generated).
    max_tokens: Annotated[int, Field(ge=0, le=_INT64_MAX)] | None = 16
    echo: bool | None = False
    # Served only with their neutral values (the schema says so).
    best_of: int | None = Field(None, json_schema_extra={"minimum": 1, "maximum": 1})
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
    if req.store:
        raise bad_request(
            "Stored chat completions ('store': true) are not served; use /v1/responses.", "store"
        )
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
        if isinstance(prompt[0], str | list) and len(prompt) > MAX_PROMPTS:
            raise bad_request(f"'prompt' may hold at most {MAX_PROMPTS} prompts.", "prompt")
        for i, item in enumerate(prompt):
            if isinstance(item, list | str) and not item:
                raise bad_request("'prompt' must not be empty.", f"prompt[{i}]")
        prompts = len(prompt) if isinstance(prompt[0], str | list) else 1
        if prompts * (req.n or 1) > MAX_CHOICES:
            raise bad_request(
                f"{prompts} prompts x 'n' = {req.n} would be {prompts * (req.n or 1)} choices; "
                f"at most {MAX_CHOICES} are served in one request.",
                "n",
            )
    if req.best_of not in (None, 1):
        raise bad_request(
            "Only 'best_of' = 1 is supported (vLLM's engine no longer samples best-of; use 'n').", "best_of"
        )
    if req.max_tokens == 0 and not req.echo:
        raise bad_request("'max_tokens' = 0 is only allowed with 'echo' (prompt scoring).", "max_tokens")
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
    if req.logit_bias:
        for key in req.logit_bias:
            if not key.isdigit():
                raise bad_request(
                    f"'logit_bias' keys must be token ids (as strings); got {key!r}.", f"logit_bias.{key}"
                )
    if req.structured_outputs is not None:
        so = req.structured_outputs
        given = [
            k
            for k in ("json_", "json_object", "regex", "choice", "grammar")
            if getattr(so, k) not in (None, False)
        ]
        if len(given) != 1:
            raise bad_request(
                "'structured_outputs' needs exactly one of 'json', 'json_object', 'regex', 'choice', 'grammar'.",
                "structured_outputs",
            )
        if req.response_format is not None and req.response_format.type != "text":
            raise bad_request(
                "Use one of 'response_format' and 'structured_outputs', not both.", "structured_outputs"
            )
    rf = req.response_format
    if (
        rf is not None
        and rf.type == "json_schema"
        and (rf.json_schema is None or rf.json_schema.schema_ is None)
    ):
        raise bad_request(
            "'response_format' of type 'json_schema' needs 'json_schema.schema'.",
            "response_format.json_schema",
        )
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
    extra = next((e for e in errors if e["type"] == "extra_forbidden"), None)
    if extra is not None:
        param = _loc_to_param(extra["loc"])
        field = str(extra["loc"][-1])
        if field in REPLACED_FIELDS and len(extra["loc"]) == 1:
            return bad_request(
                f"'{field}' is no longer supported; use '{REPLACED_FIELDS[field]}' instead.",
                param,
                code="unsupported_parameter",
            )
        return bad_request(
            f"Unrecognized request argument supplied: {param}. This server does not serve it; "
            "docs/openai-api.md lists the fields it serves.",
            param,
            code="unsupported_parameter",
        )
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
        elif part.isdigit():  # a dict key such as a logit_bias token id
            out += f".{part}"
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


# "tool_calls": the model called tools (tool_choice auto or required) and stopped; a named
# tool_choice finishes with "stop", as OpenAI and vLLM answer it.
FinishReason = Literal["stop", "length", "tool_calls"]


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
    """Per token; with ``echo`` the prompt's tokens come first, the very first without a logprob
    (``null``, nothing precedes it). ``top_logprobs`` maps the token and its alternatives."""

    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class ChatFunctionCall(_Response):
    name: str
    arguments: str  # the arguments object as JSON text


class ChatToolCall(_Response):
    id: str
    type: Literal["function"]
    function: ChatFunctionCall


class AssistantMessage(_Response):
    """``content`` is null when a tool-call or reasoning parser took all the text (``""`` with a
    required or named ``tool_choice``); ``reasoning_content`` and its alias ``reasoning`` (vLLM's
    name) are present when the model's worker has a reasoning parser; ``tool_calls`` when any."""

    role: Literal["assistant"]
    content: str | None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ChatToolCall] | None = None


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


class ChatFunctionCallDelta(_Response):
    name: str | None = None  # on the call's first delta only
    arguments: str  # a fragment; a call's fragments joined are its arguments


class ChatToolCallDelta(_Response):
    """A piece of tool call ``index``: the first names it (``id``, ``type``, ``function.name``)."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChatFunctionCallDelta


class ChatDelta(_Response):
    """``content`` unless the delta only carries reasoning or tool calls."""

    role: Literal["assistant"] | None = None  # on a choice's first chunk only
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # the same text as reasoning_content (vLLM's name)
    tool_calls: list[ChatToolCallDelta] | None = None


class ChatChunkChoice(_Response):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason | None


class ChatCompletionChunk(_Response):
    """One streamed event of ``POST /v1/chat/completions``: one choice's delta (with ``n`` > 1 the
    choices' events interleave, each with its ``index``). ``usage`` is present (null) on every chunk
    when ``stream_options.include_usage`` is true, and filled, summed over the choices, on a last
    chunk without choices."""

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
