"""OpenAI Responses API protocol (``POST /v1/responses``): the request, its validation, its
translation into a chat completion request, and the shapes of the Response object and its events.

Journey: HTTP body -> **parse + validate here** -> (with the stored conversation of
``previous_response_id``) **translate here** into a ``ChatCompletionRequest`` -> the chat path's
stages (admit, preprocess, route) -> engine -> semantic deltas -> ``dynamo.frontend.responses_api``
shapes them into the Response object / events typed below.

``parse_responses_request`` never raises a pydantic error, only ``RequestError(400, param=<field
path>)``; a field this server does not serve is a 400 naming it, never ignored. Input items are
turned into chat messages as vLLM does (``vllm/entrypoints/openai/responses/utils.py``): function
calls join the preceding assistant message's ``tool_calls``, function call outputs become ``tool``
messages, reasoning items the assistant's ``reasoning_content``. docs/responses.md lists every field.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    Tag,
    ValidationError,
    model_validator,
)

from dynamo.llm.errors import RequestError, bad_request
from dynamo.llm.openai import (
    MAX_LOGPROBS,
    ChatCompletionRequest,
    ErrorResponse,
    MaxTokens,
    MinP,
    Penalty,
    RepetitionPenalty,
    Seed,
    Temperature,
    TokenId,
    TopK,
    TopP,
    _to_request_error,
    parse_chat_request,
)

LOGPROBS_INCLUDE = "message.output_text.logprobs"
RESPONSE_ID = re.compile(r"^resp_[A-Za-z0-9_-]{1,200}$")
_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_METADATA = 16  # key-value pairs (OpenAI's limits: keys <= 64 chars, values <= 512 chars)
MAX_TOOLS = 128


class _Model(BaseModel):
    # strict: no silent coercions; forbid: a field we do not serve is a 400 naming it.
    model_config = ConfigDict(extra="forbid", strict=True)


# --- request: input items --------------------------------------------------------------------


class ContentPart(_Model):
    """A text part: ``input_text`` (user/system/developer, tool outputs) or ``output_text``
    (assistant messages given back). Other part types are refused naming their place."""

    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None  # output_text given back: accepted, carries nothing here
    logprobs: list[Any] | None = None


class MessageItem(_Model):
    """A message of the conversation (``type`` may be omitted)."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: str | None = None
    # An assistant message given back ``in_progress`` / ``incomplete`` as the last item is continued.
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None


class FunctionCallItem(_Model):
    """A call the model made earlier (given back with its output)."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(_Model):
    """The result of a function call, for the model to continue with."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class ReasoningText(_Model):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(_Model):
    """The model's earlier thinking (given back as the assistant's ``reasoning_content``)."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningText] = []
    content: list[ReasoningText] | None = None
    encrypted_content: None = None  # never produced here, so never accepted back
    status: Literal["in_progress", "completed", "incomplete"] | None = None


_ITEM_TAGS = {  # item type -> union tag (capitalised: error paths leave tags out)
    "message": "MessageItem",
    "function_call": "FunctionCallItem",
    "function_call_output": "FunctionCallOutputItem",
    "reasoning": "ReasoningItem",
}
ITEM_TYPES = tuple(_ITEM_TAGS)


def _item_tag(value: Any) -> str | None:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return _ITEM_TAGS.get(str(kind))


InputItem = Annotated[
    Annotated[MessageItem, Tag("MessageItem")]
    | Annotated[FunctionCallItem, Tag("FunctionCallItem")]
    | Annotated[FunctionCallOutputItem, Tag("FunctionCallOutputItem")]
    | Annotated[ReasoningItem, Tag("ReasoningItem")],
    Discriminator(_item_tag),
]

# --- request: the rest -----------------------------------------------------------------------


class FunctionTool(_Model):
    type: Literal["function"]
    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None


class NamedToolChoice(_Model):
    """``{"type": "function", "name": ...}``: call exactly this function."""

    type: Literal["function"]
    name: str


class TextFormat(_Model):
    """``text.format``: ``text`` (default), ``json_object``, or ``json_schema`` (structured output)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Field(pattern=_NAME_PATTERN)] | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Model):
    format: TextFormat | None = None


class ReasoningConfig(_Model):
    """``reasoning.effort`` goes to the chat template (as vLLM does); summaries are not produced."""

    effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    summary: None = None
    generate_summary: None = None


MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class ResponsesRequest(_Model):
    """``POST /v1/responses``."""

    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: bool | None = False
    store: bool | None = True
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA)] | None = None
    user: str | None = None
    truncation: Literal["disabled"] | None = None  # "auto" (dropping old turns) is not served
    include: list[Literal["message.output_text.logprobs"]] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    # Informational, echoed back; or only their neutral values.
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    service_tier: Literal["auto", "default"] | None = None
    background: Literal[False] | None = None
    # vLLM's extensions, passed to the chat request as they are.
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool | None = None
    logit_bias: dict[str, float] | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    structured_outputs: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unserved_kinds(cls, data: Any) -> Any:
        """Tools, items and content parts of kinds not served: a 400 naming the kind and place
        (before pydantic, whose union errors would name a field of the wrong member)."""
        if not isinstance(data, dict):
            return data
        tools = data.get("tools")
        if isinstance(tools, list):
            for i, tool in enumerate(tools):
                kind = tool.get("type") if isinstance(tool, dict) else None
                if kind != "function":
                    raise bad_request(
                        f"Tool type {kind!r} is not supported; only 'function' tools are.",
                        f"tools[{i}].type",
                        code="unsupported_parameter",
                    )
        items = data.get("input")
        if isinstance(items, list):
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    continue
                kind = item.get("type", "message")
                if kind not in ITEM_TYPES:
                    raise bad_request(
                        f"Input item type {kind!r} is not supported; the served types are "
                        f"{', '.join(ITEM_TYPES)}.",
                        f"input[{i}].type",
                        code="unsupported_parameter",
                    )
                for key in ("content", "output"):
                    parts = item.get(key)
                    if isinstance(parts, list):
                        for j, part in enumerate(parts):
                            ptype = part.get("type") if isinstance(part, dict) else None
                            if kind != "reasoning" and ptype not in ("input_text", "output_text"):
                                raise bad_request(
                                    f"Content part type {ptype!r} is not supported; only text parts are.",
                                    f"input[{i}].{key}[{j}].type",
                                    code="unsupported_parameter",
                                )
        return data

    @property
    def wants_logprobs(self) -> bool:
        return bool(self.include and LOGPROBS_INCLUDE in self.include)


def parse_responses_request(body: bytes | str) -> ResponsesRequest:
    """Parse and validate a ``/v1/responses`` body; raises ``RequestError`` (400) on any problem."""
    try:
        req = ResponsesRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _to_request_error(exc) from None
    if req.previous_response_id is not None and not RESPONSE_ID.match(req.previous_response_id):
        raise bad_request(
            f"Invalid 'previous_response_id': {req.previous_response_id!r}. Expected an ID that begins "
            "with 'resp_'.",
            "previous_response_id",
            code="invalid_value",
        )
    if req.top_logprobs is not None and not req.wants_logprobs:
        raise bad_request(f"'top_logprobs' needs 'include' to contain '{LOGPROBS_INCLUDE}'.", "top_logprobs")
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type == "json_schema" and (fmt.schema_ is None or fmt.name is None):
        raise bad_request("'text.format' of type 'json_schema' needs 'name' and 'schema'.", "text.format")
    if fmt is not None and fmt.type != "json_schema":
        for field in ("name", "schema_", "description", "strict"):
            if getattr(fmt, field) is not None:
                name = field.rstrip("_")
                raise bad_request(
                    f"'text.format.{name}' is only allowed with type 'json_schema'.", f"text.format.{name}"
                )
    if isinstance(req.input, list):
        for i, item in enumerate(req.input):
            if isinstance(item, ReasoningItem) and item.content is None and not item.summary:
                raise bad_request("A reasoning item needs 'content' or 'summary'.", f"input[{i}]")
    return req


# --- translation into a chat completion request ---------------------------------------------


def input_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The chat messages of this request's ``input`` (not ``instructions``, which do not carry over
    to a follow-up)."""
    if isinstance(req.input, str):
        return [{"role": "user", "content": req.input}]
    messages: list[dict[str, Any]] = []
    for item in req.input:
        _append_item(messages, item)
    return messages


def _text(parts: str | list[ContentPart]) -> str:
    return parts if isinstance(parts, str) else "".join(p.text for p in parts)


def _append_item(
    messages: list[dict[str, Any]],
    item: MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem,
) -> None:
    last = messages[-1] if messages and messages[-1].get("role") == "assistant" else None
    if isinstance(item, MessageItem):
        if item.role == "assistant":
            text = _text(item.content)
            if last is not None and last.get("content") is None:
                last["content"] = text
            else:
                messages.append({"role": "assistant", "content": text})
        elif isinstance(item.content, str):
            messages.append({"role": item.role, "content": item.content})
        else:
            parts = [{"type": "text", "text": p.text} for p in item.content]
            messages.append({"role": item.role, "content": parts})
    elif isinstance(item, FunctionCallItem):
        call = {
            "id": item.call_id,
            "type": "function",
            "function": {"name": item.name, "arguments": item.arguments},
        }
        if last is not None and last.get("content") is None:
            last.setdefault("tool_calls", []).append(call)
        elif last is not None and last.get("tool_calls"):
            last["tool_calls"].append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif isinstance(item, FunctionCallOutputItem):
        messages.append({"role": "tool", "content": _text(item.output), "tool_call_id": item.call_id})
    else:
        texts = item.content if item.content is not None else item.summary
        reasoning = "".join(t.text for t in texts)
        if last is not None and "reasoning_content" not in last and last.get("content") is None:
            last["reasoning_content"] = last["reasoning"] = reasoning
        else:
            messages.append(
                {"role": "assistant", "content": None, "reasoning_content": reasoning, "reasoning": reasoning}
            )


def _continues_final(req: ResponsesRequest) -> bool:
    """A last assistant message (or reasoning) given back unfinished is continued, as vLLM does."""
    if isinstance(req.input, str) or not req.input:
        return False
    last = req.input[-1]
    return (
        isinstance(last, MessageItem | ReasoningItem)
        and (not isinstance(last, MessageItem) or last.role == "assistant")
        and last.status in ("in_progress", "incomplete")
    )


def chat_request(req: ResponsesRequest, history: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat completion request that serves ``req`` after the conversation ``history`` (chat
    messages of the earlier turns). Its 400s name the Responses field (``to_responses_error``)."""
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    messages += history
    messages += input_messages(req)
    for m in messages:  # an assistant turn of only calls or reasoning has empty content
        if m.get("role") == "assistant" and m.get("content") is None and not m.get("tool_calls"):
            m["content"] = ""
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.max_output_tokens is not None:
        body["max_completion_tokens"] = req.max_output_tokens
    for field in (
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "user",
        "prompt_cache_key",
        "safety_identifier",
        "top_k",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "stop",
        "stop_token_ids",
        "ignore_eos",
        "logit_bias",
        "skip_special_tokens",
        "include_stop_str_in_output",
        "structured_outputs",
    ):
        value = getattr(req, field)
        if value is not None:
            body[field] = value
    if req.tools:
        body["tools"] = [
            {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
            for t in req.tools
        ]
    if isinstance(req.tool_choice, NamedToolChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.name}}
    elif req.tool_choice is not None and (req.tools or req.tool_choice != "auto"):
        body["tool_choice"] = req.tool_choice
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema = {
            "name": fmt.name,
            "schema": fmt.schema_,
            "description": fmt.description,
            "strict": fmt.strict,
        }
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {k: v for k, v in schema.items() if v is not None},
        }
    if req.wants_logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = req.top_logprobs or 0
    kwargs = dict(req.chat_template_kwargs or {})
    effort = req.reasoning.effort if req.reasoning else None
    if effort is not None:
        # As vLLM: the effort goes to the template, and thinking is on unless the effort is "none".
        kwargs.setdefault("enable_thinking", effort != "none")
        if effort != "none":
            body["reasoning_effort"] = effort
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    if _continues_final(req):
        body["add_generation_prompt"] = False
        body["continue_final_message"] = True
    try:
        return parse_chat_request(json.dumps(body))
    except RequestError as exc:
        raise to_responses_error(exc) from None


_PARAMS = [
    (re.compile(r"^messages\b.*"), "input"),
    (re.compile(r"^max_(completion_)?tokens$"), "max_output_tokens"),
    (re.compile(r"^response_format\.json_schema\.?"), "text.format."),
    (re.compile(r"^response_format"), "text.format"),
    (re.compile(r"^tools\[(\d+)\]\.function\.?"), r"tools[\1]."),
    (re.compile(r"^tool_choice\.function\.name$"), "tool_choice.name"),
    (re.compile(r"^(top_)?logprobs$"), "top_logprobs"),
    (re.compile(r"^reasoning_effort$"), "reasoning.effort"),
]


def to_responses_param(param: str | None) -> str | None:
    """A chat request's field path as the Responses field it came from."""
    if param is None:
        return None
    for pattern, repl in _PARAMS:
        if pattern.match(param):
            return pattern.sub(repl, param, count=1).rstrip(".")
    return param


def to_responses_error(exc: RequestError) -> RequestError:
    """``exc`` (raised for the translated chat request) naming the Responses field instead."""
    param = to_responses_param(exc.param)
    message = exc.message
    if exc.param and param != exc.param:
        message = message.replace(f"'{exc.param}'", f"'{param}'")
    message = message.replace("the messages", "the input").replace("'messages'", "'input'")
    return RequestError(
        exc.status,
        message,
        type=exc.type,
        param=param,
        code=exc.code,
        retry_after=exc.retry_after,
    )


def previous_response_not_found(response_id: str) -> RequestError:
    """404 for a ``previous_response_id`` that is unknown, expired or was not stored."""
    return RequestError(
        404,
        f"Previous response with id '{response_id}' not found.",
        type="invalid_request_error",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def response_not_found(response_id: str) -> RequestError:
    """404 for ``GET`` / ``DELETE /v1/responses/{id}`` of an unknown or expired response."""
    return RequestError(
        404,
        f"Response with id '{response_id}' not found.",
        type="invalid_request_error",
        param="response_id",
        code="response_not_found",
    )


# --- response types ----------------------------------------------------------------------------
# What the frontend answers, as types: ``/openapi.json`` publishes them and the tests hold real
# responses to them (and to the official SDK's own types). ``dynamo.frontend.responses_api``
# writes plain dicts of these shapes.


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TopLogprob(_Out):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(_Out):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class OutputText(_Out):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[TokenLogprob] | None


class OutputMessage(_Out):
    type: Literal["message"]
    id: str
    role: Literal["assistant"]
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class OutputFunctionCall(_Out):
    type: Literal["function_call"]
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


class ReasoningContent(_Out):
    type: Literal["reasoning_text"]
    text: str


class OutputReasoning(_Out):
    type: Literal["reasoning"]
    id: str
    summary: list[Any]
    content: list[ReasoningContent]
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = Annotated[OutputMessage | OutputFunctionCall | OutputReasoning, Field(discriminator="type")]


class InputTokensDetails(_Out):
    cached_tokens: int
    cache_write_tokens: int


class OutputTokensDetails(_Out):
    reasoning_tokens: int


class ResponseUsage(_Out):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(_Out):
    reason: Literal["max_output_tokens"]


class ReasoningEcho(_Out):
    """The request's ``reasoning``, echoed."""

    effort: str | None
    summary: None
    generate_summary: None


class ResponseError(_Out):
    code: str
    message: str


class ResponseObject(_Out):
    """The Response object: ``POST /v1/responses`` (``stream: false``), ``GET /v1/responses/{id}``,
    and the ``response`` of the created / in_progress / completed / incomplete / failed events.
    ``store`` says whether a follow-up can name it in ``previous_response_id``."""

    id: str
    object: Literal["response"]
    created_at: int
    completed_at: int | None
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: ReasoningEcho | None
    store: bool
    temperature: float | None
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_p: float | None
    top_logprobs: int | None
    truncation: Literal["disabled"]
    usage: ResponseUsage | None
    user: str | None
    metadata: dict[str, str]
    background: bool
    service_tier: str
    prompt_cache_key: str | None
    safety_identifier: str | None


class DeletedResponse(_Out):
    """``DELETE /v1/responses/{id}``."""

    id: str
    object: Literal["response"]
    deleted: Literal[True]


class _Event(_Out):
    sequence_number: int


class ResponseLifecycleEvent(_Event):
    type: Literal[
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ]
    response: ResponseObject


class OutputItemEvent(_Event):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputItem


class ContentPartEvent(_Event):
    type: Literal["response.content_part.added", "response.content_part.done"]
    output_index: int
    item_id: str
    content_index: int
    part: OutputText | ReasoningContent


class StreamLogprob(_Out):
    token: str
    logprob: float
    top_logprobs: list[dict[str, Any]]


class TextDeltaEvent(_Event):
    type: Literal["response.output_text.delta"]
    output_index: int
    item_id: str
    content_index: int
    delta: str
    logprobs: list[StreamLogprob]


class TextDoneEvent(_Event):
    type: Literal["response.output_text.done"]
    output_index: int
    item_id: str
    content_index: int
    text: str
    logprobs: list[StreamLogprob]


class ReasoningDeltaEvent(_Event):
    type: Literal["response.reasoning_text.delta"]
    output_index: int
    item_id: str
    content_index: int
    delta: str


class ReasoningDoneEvent(_Event):
    type: Literal["response.reasoning_text.done"]
    output_index: int
    item_id: str
    content_index: int
    text: str


class ArgumentsDeltaEvent(_Event):
    type: Literal["response.function_call_arguments.delta"]
    output_index: int
    item_id: str
    delta: str


class ArgumentsDoneEvent(_Event):
    type: Literal["response.function_call_arguments.done"]
    output_index: int
    item_id: str
    name: str
    arguments: str


class ErrorEvent(_Event):
    """A failure after the stream began (the status line is long gone)."""

    type: Literal["error"]
    code: str | None
    message: str
    param: str | None


class ResponseStreamEvent(
    RootModel[
        Annotated[
            ResponseLifecycleEvent
            | OutputItemEvent
            | ContentPartEvent
            | TextDeltaEvent
            | TextDoneEvent
            | ReasoningDeltaEvent
            | ReasoningDoneEvent
            | ArgumentsDeltaEvent
            | ArgumentsDoneEvent
            | ErrorEvent,
            Field(discriminator="type"),
        ]
    ]
):
    """One server-sent event of ``POST /v1/responses`` with ``stream: true`` (its ``data:``)."""


__all__ = [
    "DeletedResponse",
    "ErrorResponse",
    "ResponseObject",
    "ResponseStreamEvent",
    "ResponsesRequest",
    "chat_request",
    "input_messages",
    "parse_responses_request",
    "previous_response_not_found",
    "response_not_found",
    "to_responses_error",
]
