"""API-key check of the frontend (``--api-key``; journey: **HTTP**, before any route).

An ASGI wrapper in front of the whole app: a request whose path starts with ``/v1/`` must carry
``Authorization: Bearer <key>`` (OpenAI's scheme, so the OpenAI SDKs' ``api_key`` works as is);
otherwise it is answered 401 in the OpenAI error shape with ``WWW-Authenticate: Bearer``, before its
body is read. Several keys may be accepted (rotation). Keys are compared in constant time (digests
with ``hmac.compare_digest``), so the answer's timing says nothing about how much of a key matched.
``/health``, ``/live``, ``/metrics``, ``/openapi.json`` and ``/docs`` stay open, as with vLLM's
``--api-key``: probes and Prometheus carry no token (docs/security.md says what they reveal).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from dynamo.llm.errors import RequestError

log = logging.getLogger(__name__)

PROTECTED_PREFIX = "/v1/"


def unauthorized(message: str) -> RequestError:
    """401: no key, or not a key this frontend accepts."""
    return RequestError(401, message, code="invalid_api_key")


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class ApiKeyAuth:
    """Lets a ``/v1/`` request through only with a bearer token equal to one of ``keys``."""

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self._digests = [_digest(k.encode()) for k in keys if k]
        if not self._digests:
            raise ValueError("ApiKeyAuth needs at least one non-empty key")

    def accepts(self, authorization: bytes | None) -> RequestError | None:
        """None when the ``Authorization`` header value carries an accepted key, else the error."""
        if not authorization:
            return unauthorized(
                "You didn't provide an API key. Send it in the Authorization header: Bearer <key>."
            )
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return unauthorized("The Authorization header must be: Bearer <key>.")
        digest = _digest(token.strip())
        matched = False
        for known in self._digests:  # every key compared: the time does not depend on which matched
            matched |= hmac.compare_digest(digest, known)
        return None if matched else unauthorized("Incorrect API key provided.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
                break
        error = self.accepts(authorization)
        if error is None:
            await self.app(scope, receive, send)
            return
        log.debug("refused %s %s: %s", scope["method"], scope["path"], error.message)
        body = error.to_body()
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="dynamo"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
