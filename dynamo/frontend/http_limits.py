"""HTTP/1.1 connection limits of the frontend: the request head's size and how long a client may take
to send its head and its body (journey: **the TCP connection**, before HTTP -> parse -> ...).

``limited_protocol(...)`` is the uvicorn protocol class (``uvicorn.Config(http=...)``): uvicorn's
httptools protocol, plus:

- a request head (request line + headers) over ``max_head`` bytes -> 431, connection closed
  (counted while it arrives, so a never-ending header is refused before it is buffered);
- a head not complete ``head_timeout`` seconds after the connection opened or the previous
  response ended (a client that trickles its headers, or sends nothing) -> 408 if anything came,
  then the connection is closed;
- a body not complete ``body_timeout`` seconds after its head -> 408, connection closed; the
  handler waiting for it sees a client disconnect (``stages.parse.read_body``);
- a client that stops reading its response: once the unsent output is over the transport's high
  water mark, ``write_timeout`` seconds without the client taking any -> the connection is dropped,
  so the handler sees a disconnect and the engine's work is cancelled (as nginx's ``send_timeout``);
- malformed HTTP -> 400 with the OpenAI error body (uvicorn's is plain text).

Everything runs in the protocol's callbacks on the event loop: one timer per connection phase,
no task per connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger(__name__)
HEAD_OVERHEAD = 4  # bytes of ": " and CRLF around each header, not in its name or value


def error_bytes(status: int, message: str, code: str) -> bytes:
    """A whole ``Connection: close`` HTTP response with the OpenAI error body."""
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    ).encode()
    head = (
        b"content-type: application/json\r\n"
        + b"content-length: %d\r\n" % len(body)
        + b"connection: close\r\n\r\n"
    )
    return STATUS_LINE[status] + head + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head size and head/body time limits (class attributes,
    set by ``limited_protocol``)."""

    max_head = 32 * 1024
    head_timeout = 30.0
    body_timeout = 60.0
    write_timeout = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between a message's start (or the previous response) and its headers
        self._head_bytes = 0  # bytes received while _in_head (an upper bound of the head's size)
        self._head_size = 0  # the head's size counted from the parser's callbacks
        self._in_body = False  # headers done, message not complete
        self._refused = False  # answered by this class and closing: ignore what still arrives
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None  # while writing is paused

    # --- connection -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.head_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_write_timer()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.write_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_write_timer()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and not self._refused and self._head_bytes > self.max_head:
            self._refuse(
                431, f"Request headers are too large (limit {self.max_head} bytes).", "headers_too_large"
            )

    def send_400_response(self, msg: str) -> None:
        if self._refused:
            return
        self._refuse(400, f"{msg.rstrip('.')}: malformed HTTP.", "invalid_http")

    # --- parser callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + HEAD_OVERHEAD
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._head_size > self.max_head:
            # The whole head came in one read: refuse it here, before the application sees it,
            # and stop the parser (its error is swallowed: the connection is already answered).
            self._refuse(
                431, f"Request headers are too large (limit {self.max_head} bytes).", "headers_too_large"
            )
            raise ValueError("request head too large")
        self._in_head = False
        self._in_body = True
        self._arm(self.body_timeout, self._body_timed_out)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        super().on_message_complete()
        # What arrives from now on is the next request's head (pipelined, or after the response).
        self._in_head = True
        self._head_bytes = 0
        if self.cycle is None or self.cycle.response_complete:
            self._arm(self.head_timeout, self._head_timed_out)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next head's time starts now (not while a long response streams); uvicorn's
        # keep-alive timer bounds the idle time until its first byte, this one the whole head.
        if self._in_head and self._timer is None and not self.transport.is_closing():
            self._arm(self.head_timeout, self._head_timed_out)

    # --- limits ---------------------------------------------------------------------------
    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes == 0:  # an idle connection: nothing to answer
            self._refused = True
            self.transport.close()
            return
        self._refuse(408, f"Request headers not received within {self.head_timeout:g} s.", "request_timeout")

    def _body_timed_out(self) -> None:
        self._timer = None
        if not self._in_body or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            return  # answering already (without waiting for the body): let it finish
        if cycle is not None and not cycle.response_complete:
            # The handler waiting for the body gets a disconnect; it cannot answer any more.
            cycle.disconnected = True
            cycle.message_event.set()
        if cycle is not None and cycle.response_complete:
            self._refused = True
            self.transport.close()
            return
        self._refuse(408, f"Request body not received within {self.body_timeout:g} s.", "request_timeout")

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if not self.transport.is_closing():
            log.info("client %s took no response data for %g s; dropping it", self.client, self.write_timeout)
            self._refused = True
            self.transport.abort()  # what is buffered cannot be delivered: drop it now

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer ``status`` with the OpenAI error body and close the connection."""
        self._refused = True
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if not self.transport.is_closing():
            self.transport.write(error_bytes(status, message, code))
            self.transport.close()


def limited_protocol(
    max_head: int, head_timeout: float, body_timeout: float, write_timeout: float
) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "max_head": max_head,
            "head_timeout": head_timeout,
            "body_timeout": body_timeout,
            "write_timeout": write_timeout,
        },
    )
