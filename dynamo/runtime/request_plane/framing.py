"""Frames of the TCP request plane.

A frame is ``u32 payload length | u8 kind | u64 stream id | payload``; payloads are msgpack.
Many streams share one connection; each stream is one request and a sequence of responses ended
by ``END`` or ``ERROR``. ``DATA`` carries a msgpack *array* of response items, so a burst of items
costs one frame. ``CREDIT`` returns flow-control credit (items consumed) to the sender.
``PING`` / ``PONG`` (stream id 0, no payload) are connection liveness: either side answers a
``PING`` with a ``PONG`` from its event loop, so a peer that is stopped, hung or cut off (no FIN)
is noticed by the silence (see client.py). ``GOAWAY`` (stream id 0, no payload) is a worker's
notice that it is shutting down: the caller opens no new stream on the connection and closes it
once its open streams have ended; every request the worker receives until then is answered (a
``draining`` error at worst), so no request is lost in the close.

An ``array.array`` in a payload (a prompt's token ids) travels as its little-endian bytes, one
msgpack ``bin`` (``encode_hook``): no Python object per element on either side. The receiver's typed
decoder knows the element type and rebuilds the array (``dynamo.llm.protocols``). A peer of an
earlier version expects a list there, so the two sides say what they read: a worker answers a
``PING`` with a ``PONG`` whose payload is its ``FEATURES`` (a msgpack map; earlier versions send an
empty ``PONG`` and ignore a payload), and a caller sends arrays as bytes only to a worker that
listed ``"arrays": "bin"`` (as lists otherwise: ``legacy_encode_hook``).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator
from enum import IntEnum
from typing import Any

HEADER = struct.Struct(">IBQ")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 32 * 1024 * 1024  # 32 MiB, as the reference
STREAM_WINDOW = 512  # items a worker may send ahead of the reader on one stream


class FrameKind(IntEnum):
    REQUEST = 1
    CANCEL = 2
    DATA = 3
    END = 4
    ERROR = 5
    CREDIT = 6
    PING = 7
    PONG = 8
    GOAWAY = 9


_KINDS = frozenset(int(k) for k in FrameKind)


FEATURES = {"arrays": "bin"}  # what this version reads beyond the frames (a worker's PONG payload)


def encode_hook(obj: Any) -> Any:
    """msgspec ``enc_hook`` of the request plane: arrays as their little-endian bytes."""
    if isinstance(obj, array):
        if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
            obj = array(obj.typecode, obj)
            obj.byteswap()
        return memoryview(obj).cast("B")
    raise NotImplementedError(f"cannot send a {type(obj).__name__} on the request plane")


def legacy_encode_hook(obj: Any) -> Any:
    """msgspec ``enc_hook`` for a peer that did not list ``"arrays": "bin"``: arrays as lists."""
    if isinstance(obj, array):
        return obj.tolist()
    raise NotImplementedError(f"cannot send a {type(obj).__name__} on the request plane")


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame; the connection must be closed."""


def encode_frame(kind: FrameKind, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame as bytes."""
    return HEADER.pack(len(payload), kind, stream_id) + payload


class FrameParser:
    """Incremental frame parser: ``feed`` bytes, iterate complete frames."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()  # an incomplete frame left from earlier reads

    def feed(self, data: bytes) -> Iterator[tuple[int, int, bytes]]:
        """Add received bytes and yield ``(kind, stream_id, payload)`` for each complete frame.

        Raises ``ProtocolError`` on an oversized frame or an unknown kind.
        """
        buf = self._buf
        if buf:  # join the partial frame (the common case, whole frames, copies nothing here)
            buf += data
            data = bytes(buf)
            buf.clear()
        pos = 0
        end = len(data)
        unpack = HEADER.unpack_from
        try:
            while end - pos >= HEADER_SIZE:
                length, kind, stream_id = unpack(data, pos)
                if length > MAX_PAYLOAD:
                    raise ProtocolError(f"frame of {length} bytes exceeds the {MAX_PAYLOAD}-byte limit")
                if kind not in _KINDS:
                    raise ProtocolError(f"unknown frame kind {kind}")
                start = pos + HEADER_SIZE
                if end - start < length:
                    break
                pos = start + length
                yield kind, stream_id, data[start:pos]
        finally:
            if pos < end:
                buf += data[pos:]
