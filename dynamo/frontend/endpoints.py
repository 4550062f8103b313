"""The two completion endpoints as data: path, protocol types, parser and preprocessing step.

Journey: HTTP -> **which endpoint** -> parse -> preprocess -> route -> stream | collect. The ASGI app
dispatches on ``ENDPOINTS``, the stages read the rest, and ``openapi`` documents the same types, so
an endpoint's behaviour and its description come from one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from dynamo.llm import openai
from dynamo.llm.preprocessor import PreprocessedOutput, Preprocessor


@dataclass(frozen=True, slots=True)
class CompletionEndpoint:
    """One OpenAI completion route served by the stages."""

    path: str
    kind: str  # ResponseBuilder's "chat" | "completion"
    label: str  # the endpoint label of dynamo_frontend_requests
    id_prefix: str  # of response ids
    operation_id: str
    summary: str
    request_type: type[BaseModel]
    response_type: type[BaseModel]  # stream: false
    chunk_type: type[BaseModel]  # each event of stream: true
    parse: Callable[[bytes], Any]  # body -> validated request, RequestError(400) otherwise
    # (model's preprocessor, request, id) -> one per choice (n > 1, a list of prompts)
    preprocess: Callable[[Preprocessor, Any, str], list[PreprocessedOutput]]


CHAT = CompletionEndpoint(
    path="/v1/chat/completions",
    kind="chat",
    label="chat_completions",
    id_prefix="chatcmpl-",
    operation_id="create_chat_completion",
    summary="Create a chat completion",
    request_type=openai.ChatCompletionRequest,
    response_type=openai.ChatCompletionResponse,
    chunk_type=openai.ChatCompletionChunk,
    parse=openai.parse_chat_request,
    preprocess=Preprocessor.chat_choices,
)

COMPLETIONS = CompletionEndpoint(
    path="/v1/completions",
    kind="completion",
    label="completions",
    id_prefix="cmpl-",
    operation_id="create_completion",
    summary="Create a text completion",
    request_type=openai.CompletionRequest,
    response_type=openai.CompletionResponse,
    chunk_type=openai.CompletionChunk,
    parse=openai.parse_completion_request,
    preprocess=Preprocessor.completion_choices,
)

ENDPOINTS: dict[str, CompletionEndpoint] = {e.path: e for e in (CHAT, COMPLETIONS)}
