"""Stage 2, preprocess: admit the request to its model, then template and tokenize it.

Journey: parse -> **preprocess** -> route. ``admit`` refuses before any work: 404 for a model no
worker registered, 503 while it has no live worker, 429 once ``--max-inflight-requests`` of its
requests are in flight. ``preprocess`` refuses (404) a model its card does not serve on the endpoint
(an embedding model), then runs the model's ``Preprocessor`` (``dynamo.llm.preprocessor``: chat
template, tokenizer, sampling and stop mapping; 400 for a prompt it cannot serve), off the event
loop for large bodies.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dynamo.frontend.endpoints import CompletionEndpoint
from dynamo.frontend.models import ModelManager, ServedModel
from dynamo.llm.errors import model_not_found, service_unavailable, too_many_requests
from dynamo.llm.preprocessor import PreprocessedOutput

_MODEL_TYPES = {"chat": "chat", "completion": "completions"}  # endpoint kind -> card model type


def admit(models: ModelManager, name: str, max_inflight: int) -> ServedModel:
    """The served model ``name``, if it can take one more request now."""
    model = models.get(name)
    if model is None:
        raise model_not_found(name)
    if not model.has_workers:
        raise service_unavailable(f"no worker serves model '{name}' right now")
    if model.inflight >= max_inflight:
        raise too_many_requests(f"model '{name}' has {model.inflight} requests in flight; retry shortly")
    return model


async def preprocess(
    model: ServedModel, endpoint: CompletionEndpoint, request: Any, request_id: str, offload: bool
) -> list[PreprocessedOutput]:
    """The tokenized request(s) for the engines (one per choice) and what stays here for the way back."""
    model.require(_MODEL_TYPES[endpoint.kind])
    if offload:
        return await asyncio.to_thread(endpoint.preprocess, model.preprocessor, request, request_id)
    return endpoint.preprocess(model.preprocessor, request, request_id)
