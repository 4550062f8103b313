"""Stored responses: what ``previous_response_id`` continues and ``GET /v1/responses/{id}`` returns,
kept in the graph's key-value store (``DistributedRuntime.store``) so that any frontend process or
replica serves the follow-up (journey: a response ends -> **saved here** ... a follow-up arrives at
any frontend -> **loaded here** -> its conversation is prepended to the new input).

A record is one JSON value under ``registry.store_key(<frontend's namespace>, "responses", id)``:
the Response object and the conversation up to and including it as chat messages (without the
``instructions``, which do not carry over). It lives ``--response-ttl`` seconds. A record larger than
``--max-stored-response-bytes`` is not stored: the response says ``"store": false`` and a follow-up
naming it gets the 404 of an unknown id.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from dynamo.runtime.discovery.registry import store_key
from dynamo.runtime.store import KeyValueStore

log = logging.getLogger(__name__)

KIND = "responses"


class StoredResponse(msgspec.Struct):
    """One stored response: the Response object and its whole conversation (chat messages)."""

    response: dict[str, Any]
    messages: list[dict[str, Any]]


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(StoredResponse).decode


class ResponseStore:
    """Saves and loads ``StoredResponse`` records for one namespace."""

    def __init__(self, store: KeyValueStore, namespace: str, ttl: float, max_bytes: int) -> None:
        self.store = store
        self.namespace = namespace
        self.ttl = ttl
        self.max_bytes = max_bytes

    def _key(self, response_id: str) -> str:
        return store_key(self.namespace, KIND, response_id)

    async def save(self, record: StoredResponse) -> bool:
        """Store ``record``; False when it is over the size bound or the store failed (logged)."""
        response_id = record.response["id"]
        data = _encode(record)
        if len(data) > self.max_bytes:
            log.warning(
                "response %s not stored: %d bytes is over --max-stored-response-bytes (%d)",
                response_id,
                len(data),
                self.max_bytes,
            )
            return False
        try:
            await self.store.put(self._key(response_id), data, self.ttl)
        except Exception as exc:  # the store's backend is down: the answer still goes out
            log.error("response %s not stored: %s", response_id, exc)
            return False
        return True

    async def load(self, response_id: str) -> StoredResponse | None:
        """The record of ``response_id``; None when unknown, expired or not a valid id."""
        try:
            key = self._key(response_id)
        except ValueError:
            return None
        raw = await self.store.get(key)
        if raw is None:
            return None
        try:
            return _decode(raw)
        except msgspec.DecodeError:
            log.warning("stored response %s is unreadable; treating it as missing", response_id)
            return None

    async def delete(self, response_id: str) -> bool:
        """Remove the record; whether it existed."""
        try:
            key = self._key(response_id)
        except ValueError:
            return False
        return await self.store.delete(key)
