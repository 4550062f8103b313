"""A prompt's token ids as one compact array of unsigned 32-bit ints (``TokenIds``).

Journey: tokenize (the prefix cache joins cached pieces with a copy of their bytes) -> the KV
router's block hashes (read as bytes) -> the request plane (sent as its little-endian bytes, one
msgpack ``bin``) -> the engine worker (rebuilt by a copy; an engine that needs a list makes one).
No step makes a Python object per token, which at 32k tokens was a large share of the frontend's
and the mocker's CPU per request. Token ids are below 2**32, as in the reference's wire format.

``TokenIds`` is ``array('I')``: a sequence of ints (``len``, indexing, slicing, iteration); it does
not compare equal to a list (``list(ids) == [...]``).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

TYPECODE = "I"

if TYPE_CHECKING:
    TokenIds: TypeAlias = array[int]
else:
    TokenIds = array  # what msgspec sees in the wire types' annotations

if array(TYPECODE).itemsize != 4:  # pragma: no cover - every mainstream platform has 4-byte unsigned int
    raise ImportError("array('I') is not 32-bit on this platform")


def as_token_ids(ids: Iterable[int]) -> TokenIds:
    """``ids`` as ``TokenIds`` (the same object when it already is one). ``ValueError`` for an id
    outside 0..2**32-1, ``TypeError`` for something that is not an int."""
    if type(ids) is array and ids.typecode == TYPECODE:
        return ids
    try:
        return array(TYPECODE, ids)
    except OverflowError:
        raise ValueError("token ids must be between 0 and 2**32-1") from None


def from_wire(value: Any) -> TokenIds:
    """``TokenIds`` from what a decoder met on the wire: little-endian bytes, or a list of ints (an
    older sender, a hand-written request). ``ValueError``/``TypeError`` otherwise (a decoder's
    ``dec_hook`` turns them into a validation error naming the field)."""
    if isinstance(value, bytes | bytearray | memoryview):
        out = array(TYPECODE)
        out.frombytes(value)  # ValueError unless a whole number of ids
        if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
            out.byteswap()
        return out
    if isinstance(value, list):
        return as_token_ids(value)
    raise TypeError(f"expected token ids (bytes or a list of ints), got {type(value).__name__}")


def dec_hook(tp: type, value: Any) -> Any:
    """msgspec ``dec_hook`` for the wire types that hold ``TokenIds``."""
    if tp is array:
        return from_wire(value)
    raise NotImplementedError(f"no decoder for {tp!r}")
