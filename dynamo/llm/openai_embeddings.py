"""OpenAI ``/v1/embeddings`` protocol types: the request, its validation and limits, the response.

Journey: **HTTP body -> parse + validate here** -> tokenize and route (``dynamo.frontend.embeddings``)
-> an embedding worker's ``/embed`` -> vectors -> response (shaped as ``EmbeddingResponse``). As in
``dynamo.llm.openai``, pydantic lives only at this edge and the OpenAPI document is generated from
these types.

``parse_embedding_request`` never raises a pydantic error, only ``RequestError(400, param=...)``:
an unknown field is refused by name, and so is every break of the limits the OpenAI API reference
documents (``MAX_INPUTS`` items, no empty input; the per-input context length and the
``MAX_TOKENS_PER_REQUEST`` sum are checked once the inputs are tokenized). Extension: vLLM's
``add_special_tokens`` (default true, as vLLM's server adds them for embeddings).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dynamo.llm.errors import RequestError, bad_request
from dynamo.llm.openai import _to_request_error

MAX_INPUTS = 2048  # items in one request's ``input`` array (OpenAI)
MAX_TOKENS_PER_REQUEST = 300_000  # tokens summed over a request's inputs (OpenAI)

# The limits below are published in the schema and checked by ``parse_embedding_request`` (whose
# messages name the item at fault), not by pydantic.
TokenId = Annotated[int, Field(ge=0)]
Text = Annotated[str, Field(json_schema_extra={"minLength": 1})]
TokenIds = Annotated[list[TokenId], Field(json_schema_extra={"minItems": 1})]
_BATCH = {"minItems": 1, "maxItems": MAX_INPUTS}
EmbeddingInput = (
    Text
    | Annotated[list[Text], Field(json_schema_extra=_BATCH)]
    | TokenIds
    | Annotated[list[TokenIds], Field(json_schema_extra=_BATCH)]
)


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``."""

    # strict: no "3" -> 3 coercions; forbid: a field we do not know is refused, never ignored.
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None
    add_special_tokens: bool = True  # vLLM extension

    def texts_or_ids(self) -> list[str] | list[list[int]]:
        """The inputs as a list: strings to tokenize, or token-id sequences as given."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], int):
            return [[t for t in value if isinstance(t, int)]]
        return value  # type: ignore[return-value]

    @property
    def is_batch(self) -> bool:
        """Whether ``input`` was a list of inputs (errors then name ``input[i]``)."""
        return isinstance(self.input, list) and bool(self.input) and not isinstance(self.input[0], int)


def parse_embedding_request(body: bytes | str) -> EmbeddingRequest:
    """Parse and validate an embeddings body; ``RequestError`` (400) on any problem."""
    try:
        req = EmbeddingRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    items = req.texts_or_ids()
    if not items:
        raise bad_request("'input' must not be empty.", "input")
    if len(items) > MAX_INPUTS:
        raise bad_request(
            f"'input' holds {len(items)} items; at most {MAX_INPUTS} are allowed per request.", "input"
        )
    for i, item in enumerate(items):
        if not item:
            param = f"input[{i}]" if req.is_batch else "input"
            raise bad_request(f"'{param}' must not be empty.", param)
    return req


def _validation_error(exc: ValidationError) -> RequestError:
    extra = [e for e in exc.errors(include_url=False) if e["type"] == "extra_forbidden"]
    if extra:
        name = ".".join(str(p) for p in extra[0]["loc"])
        return bad_request(f"Unrecognized request argument supplied: {name}", name, code="unknown_parameter")
    return _to_request_error(exc)


# --- response types -----------------------------------------------------------------------------
# What the frontend answers (built as plain dicts by ``dynamo.frontend.embeddings``); the OpenAPI
# document publishes these and the tests hold real responses to them.


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Embedding(_Response):
    object: Literal["embedding"]
    index: int  # the input's position in ``input``
    # ``encoding_format`` float: the vector; base64: its float32 little-endian bytes, base64-encoded
    embedding: list[float] | str


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(_Response):
    """``POST /v1/embeddings``: one vector per input, in input order."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
