"""Client-facing request errors, in the OpenAI error shape.

Journey: raised anywhere on the way in (HTTP -> **validate / preprocess** -> route) and turned into
the HTTP response by the frontend with ``status``, ``headers()`` and ``to_body()``:
``{"error": {"message", "type", "param", "code"}}`` — the shape the OpenAI SDKs parse.
"""

from __future__ import annotations

import json
import math

INVALID_REQUEST = "invalid_request_error"


class RequestError(Exception):
    """A request the frontend refuses, with the HTTP status and OpenAI error fields to answer with.

    ``param`` names the offending field as a path (``"temperature"``, ``"messages[0].content"``);
    ``retry_after`` (seconds) becomes a ``Retry-After`` header on 429/503.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_body(self) -> bytes:
        """The JSON response body."""
        return json.dumps(self.to_dict(), ensure_ascii=False).encode()

    def headers(self) -> dict[str, str]:
        """Extra response headers (``Retry-After`` when set)."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(0, math.ceil(self.retry_after)))}

    def __repr__(self) -> str:
        return f"RequestError({self.status}, {self.message!r}, param={self.param!r}, code={self.code!r})"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> RequestError:
    """400: the request is malformed or asks for something this server cannot do."""
    return RequestError(400, message, param=param, code=code)


def model_not_found(model: str) -> RequestError:
    """404: no worker serves this model name."""
    return RequestError(
        404,
        f"The model '{model}' does not exist or is not being served.",
        param="model",
        code="model_not_found",
    )


def payload_too_large(limit_bytes: int) -> RequestError:
    """413: the request body is over the frontend's size limit."""
    return RequestError(
        413,
        f"Request body is too large (limit {limit_bytes} bytes).",
        code="request_too_large",
    )


def too_many_requests(
    message: str = "Too many requests; retry later.", retry_after: float = 1.0
) -> RequestError:
    """429: the frontend's own admission limit is reached."""
    return RequestError(
        429, message, type="rate_limit_error", code="rate_limit_exceeded", retry_after=retry_after
    )


def service_unavailable(
    message: str = "No worker is available to serve this request.", retry_after: float | None = 1.0
) -> RequestError:
    """503: the model is known but no instance can take the request now (all busy or gone)."""
    return RequestError(
        503, message, type="service_unavailable_error", code="service_unavailable", retry_after=retry_after
    )


def internal_error(message: str = "Internal server error.") -> RequestError:
    """500: a failure on our side (engine error, broken stream)."""
    return RequestError(500, message, type="server_error", code="internal_error")
