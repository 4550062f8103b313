"""Typed watches of discovery: instances and model cards coming and going, per scope.

Journey: workers register (``registry``) -> **these watches** -> the frontend's model manager,
the standalone router and ``EndpointClient`` keep their view of live workers -> routing. Callers
never see keys: they get ``InstanceEvent`` / ``CardEvent`` (added, updated or removed; endpoint;
instance id; the decoded ``InstanceRecord`` or the card's raw JSON bytes, which ``dynamo.llm``
decodes).

Contract of a watch: it yields the scope's current entries as ``added`` first, then changes, until
it is cancelled or closed. A scope is every namespace, some namespaces (one key prefix each, so
other namespaces' keys are never received) or one endpoint. Each entry is reported once per
change: after a backend's watch reconnects (etcd restarted, even with its data lost) the backend
re-lists and only the difference comes through, and every ``reconcile_interval`` seconds the
scope is re-listed and anything a watch missed is corrected (an entry whose key changed while
re-listing is left to the watch). A malformed key or instance record is logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

import msgspec

from dynamo.runtime.discovery.base import Discovery, WatchEvent, diff_views
from dynamo.runtime.discovery.registry import InstanceRecord, Kind, parse_key, scope_prefixes
from dynamo.runtime.names import EndpointId

log = logging.getLogger(__name__)

RECONCILE_INTERVAL = 30.0  # seconds between full re-lists of a watched scope

EventKind = Literal["added", "updated", "removed"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class InstanceEvent:
    """An instance of ``endpoint`` appeared, changed its record, or went away (``record`` None)."""

    kind: EventKind
    endpoint: EndpointId
    instance_id: int
    record: InstanceRecord | None = None

    @property
    def removed(self) -> bool:
        return self.kind == "removed"


@dataclass(frozen=True, slots=True)
class CardEvent:
    """A model card of ``instance_id`` serving ``endpoint``: its raw JSON, or None when removed."""

    kind: EventKind
    endpoint: EndpointId
    instance_id: int
    card: bytes | None = None

    @property
    def removed(self) -> bool:
        return self.kind == "removed"


def watch_instances(
    discovery: Discovery,
    *,
    namespaces: Iterable[str] | None = None,
    endpoint: EndpointId | None = None,
    reconcile_interval: float | None = RECONCILE_INTERVAL,
) -> AsyncIterator[InstanceEvent]:
    """Instances of ``endpoint``, else of ``namespaces``, else of every namespace."""
    prefixes = scope_prefixes("instances", namespaces, endpoint)

    async def events() -> AsyncIterator[InstanceEvent]:
        async for kind, ep, iid, record in _typed(
            discovery, "instances", prefixes, reconcile_interval, _decode_record
        ):
            yield InstanceEvent(kind, ep, iid, record)

    return events()


def watch_model_cards(
    discovery: Discovery,
    *,
    namespaces: Iterable[str] | None = None,
    endpoint: EndpointId | None = None,
    reconcile_interval: float | None = RECONCILE_INTERVAL,
) -> AsyncIterator[CardEvent]:
    """Model cards of ``endpoint``, else of ``namespaces``, else of every namespace (raw JSON)."""
    prefixes = scope_prefixes("cards", namespaces, endpoint)

    async def events() -> AsyncIterator[CardEvent]:
        async for kind, ep, iid, card in _typed(discovery, "cards", prefixes, reconcile_interval, _raw):
            yield CardEvent(kind, ep, iid, card)

    return events()


async def list_instances(
    discovery: Discovery, *, namespaces: Iterable[str] | None = None, endpoint: EndpointId | None = None
) -> list[InstanceRecord]:
    """The live instances of a scope now (malformed records are skipped)."""
    records = []
    for prefix in scope_prefixes("instances", namespaces, endpoint):
        for key, value in (await discovery.get_prefix(prefix)).items():
            if parse_key("instances", key) is None:
                continue
            record = _decode_record(value, key)
            if record is not None:
                records.append(record)
    return records


_record_decoder = msgspec.json.Decoder(InstanceRecord)


def _raw(value: bytes, key: str) -> bytes:
    return value


def _decode_record(value: bytes, key: str = "") -> InstanceRecord | None:
    try:
        return _record_decoder.decode(value)
    except msgspec.DecodeError as exc:
        log.warning("ignoring malformed instance record at %s: %s", key, exc)
        return None


async def _typed(
    discovery: Discovery,
    kind: Kind,
    prefixes: list[str],
    reconcile_interval: float | None,
    decode: Callable[[bytes, str], T | None],
) -> AsyncIterator[tuple[EventKind, EndpointId, int, T | None]]:
    """Key events -> (added|updated|removed, endpoint, instance id, decoded value)."""
    reported: set[str] = set()  # keys the consumer has seen as present
    async for event in _watch_keys(discovery, prefixes, reconcile_interval):
        parsed = parse_key(kind, event.key)
        if parsed is None:
            log.debug("ignoring discovery key %s: not %s/<ns>/<component>/<endpoint>/<id>", event.key, kind)
            continue
        endpoint, iid = parsed
        if event.kind == "delete":
            if event.key in reported:
                reported.discard(event.key)
                yield "removed", endpoint, iid, None
            continue
        assert event.value is not None
        value = decode(event.value, event.key)
        if value is None:
            continue
        change: EventKind = "updated" if event.key in reported else "added"
        reported.add(event.key)
        yield change, endpoint, iid, value


class _RelistStarted:
    """Marker: a re-list begins; keys with events from here on are left to the watches."""


@dataclass(slots=True)
class _Relisted:
    view: dict[str, bytes] | None  # None: the re-list failed


@dataclass(slots=True)
class _Failed:
    error: BaseException


_Item = WatchEvent | _RelistStarted | _Relisted | _Failed


async def _watch_keys(
    discovery: Discovery, prefixes: list[str], reconcile_interval: float | None
) -> AsyncIterator[WatchEvent]:
    """The backend watches of ``prefixes`` merged, each key reported once per change, re-listed
    every ``reconcile_interval`` seconds (None: never)."""
    queue: asyncio.Queue[_Item] = asyncio.Queue()
    tasks = [
        asyncio.create_task(_pump(discovery.watch_prefix(p), queue), name=f"discovery-watch:{p}")
        for p in prefixes
    ]
    if reconcile_interval:
        tasks.append(
            asyncio.create_task(
                _relist_every(discovery, prefixes, reconcile_interval, queue), name="discovery-reconcile"
            )
        )
    view: dict[str, bytes] = {}
    touched: set[str] | None = None  # keys with events since the running re-list began
    try:
        while True:
            item = await queue.get()
            if isinstance(item, WatchEvent):
                if touched is not None:
                    touched.add(item.key)
                if _apply(view, item):
                    yield item
            elif isinstance(item, _RelistStarted):
                touched = set()
            elif isinstance(item, _Relisted):
                if item.view is not None and touched is not None:
                    missed = [e for e in diff_views(view, item.view) if e.key not in touched]
                    if missed:
                        log.warning(
                            "discovery reconcile under %s: %d changes the watch missed",
                            ", ".join(prefixes),
                            len(missed),
                        )
                    for event in missed:
                        _apply(view, event)
                        yield event
                touched = None
            else:
                raise item.error
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _apply(view: dict[str, bytes], event: WatchEvent) -> bool:
    """Apply ``event`` to ``view``; False when it changes nothing (already known)."""
    if event.kind == "put":
        assert event.value is not None
        if view.get(event.key) == event.value:
            return False
        view[event.key] = event.value
        return True
    return view.pop(event.key, None) is not None


async def _pump(source: AsyncIterator[WatchEvent], queue: asyncio.Queue[_Item]) -> None:
    try:
        async for event in source:
            queue.put_nowait(event)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        queue.put_nowait(_Failed(exc))
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def _relist_every(
    discovery: Discovery, prefixes: list[str], interval: float, queue: asyncio.Queue[_Item]
) -> None:
    while True:
        await asyncio.sleep(interval)
        queue.put_nowait(_RelistStarted())
        current: dict[str, bytes] = {}
        try:
            for prefix in prefixes:
                current.update(await discovery.get_prefix(prefix))
        except Exception as exc:  # the backend's watch retries on its own; so does the next re-list
            log.debug("discovery reconcile under %s failed: %s", ", ".join(prefixes), exc)
            queue.put_nowait(_Relisted(None))
            continue
        queue.put_nowait(_Relisted(current))
