"""The runtime's typed discovery watch on the mem, file and etcd backends: instances and cards
added, updated and removed, namespace and endpoint scopes, the periodic reconcile, and the resync
after etcd restarts with its data lost."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dynamo.runtime import CardEvent, EndpointId, InstanceEvent, InstanceRecord
from dynamo.runtime.discovery import Discovery
from dynamo.runtime.discovery.etcd import EtcdDiscovery
from dynamo.runtime.discovery.mem import MemDiscovery, MemStore
from dynamo.runtime.discovery.registry import card_key, instance_key, scope_prefixes
from dynamo.runtime.discovery.watch import list_instances, watch_instances, watch_model_cards
from tests.support.servers import EtcdServer

pytestmark = pytest.mark.timeout(90)


class Collected:
    """Consumes a watch in a task (cancelling an ``anext`` would close the generator)."""

    def __init__(self, events: AsyncIterator[Any]) -> None:
        self.events: list[Any] = []
        self._task = asyncio.create_task(self._run(events))

    async def _run(self, events: AsyncIterator[Any]) -> None:
        async for event in events:
            self.events.append(event)

    async def until(self, check: Callable[[], bool], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self._task.done():
                self._task.result()  # re-raise what ended the watch
                raise AssertionError(f"the watch ended while waiting for {what}")
            assert time.monotonic() < deadline, f"timed out waiting for {what}; got {self.events}"
            await asyncio.sleep(0.02)

    def view(self) -> dict[tuple[EndpointId, int], Any]:
        """The state the events describe: (endpoint, instance id) -> record or card."""
        out: dict[tuple[EndpointId, int], Any] = {}
        for e in self.events:
            key = (e.endpoint, e.instance_id)
            if e.removed:
                assert key in out, f"removed before added: {e}"
                del out[key]
            else:
                assert (key in out) == (e.kind == "updated"), (
                    f"{e.kind} of {'a known' if key in out else 'an unknown'} key"
                )
                out[key] = e.record if isinstance(e, InstanceEvent) else e.card
        return out

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def record(ep: EndpointId, iid: int, address: str = "127.0.0.1:1") -> InstanceRecord:
    return InstanceRecord(ep.namespace, ep.component, ep.name, iid, address)


async def register(d: Discovery, ep: EndpointId, iid: int, address: str = "127.0.0.1:1") -> InstanceRecord:
    rec = record(ep, iid, address)
    await d.put(instance_key(ep, iid), msgspec.json.encode(rec))
    return rec


def names(tag: str) -> tuple[EndpointId, EndpointId, EndpointId]:
    """Endpoints in three namespaces private to one test (the etcd server is shared)."""
    return tuple(EndpointId(f"{tag}-{x}", "backend", "generate") for x in "abc")  # type: ignore[return-value]


async def test_instances_added_updated_removed_within_the_namespaces_asked(backend_pair, request):
    owner, observer = backend_pair
    a, b, c = names(f"w{request.node.callspec.id}")
    rec_a = await register(owner, a, 1)
    await register(owner, c, 3)  # another namespace: never seen
    watch = Collected(watch_instances(observer, namespaces=[a.namespace, b.namespace]))
    try:
        await watch.until(lambda: len(watch.events) == 1, "the current instance")
        assert watch.events[0] == InstanceEvent("added", a, 1, rec_a)

        rec_b = await register(owner, b, 2)
        await watch.until(lambda: len(watch.events) == 2, "the new instance")
        assert watch.events[1] == InstanceEvent("added", b, 2, rec_b)

        moved = await register(owner, a, 1, "127.0.0.1:2")
        await register(owner, b, 2)  # the same record again: not a change
        await watch.until(lambda: len(watch.events) == 3, "the changed record")
        assert watch.events[2] == InstanceEvent("updated", a, 1, moved)

        await owner.delete(instance_key(a, 1))
        await register(owner, c, 4)
        await watch.until(lambda: len(watch.events) == 4, "the removal")
        assert watch.events[3] == InstanceEvent("removed", a, 1)
        await asyncio.sleep(1.2)  # a poll or two of the file backend
        assert watch.view() == {(b, 2): rec_b}
    finally:
        await watch.close()


async def test_cards_come_raw_and_an_endpoint_scope_sees_only_that_endpoint(backend_pair, request):
    owner, observer = backend_pair
    a, _, _ = names(f"c{request.node.callspec.id}")
    other = EndpointId(a.namespace, "prefill", "generate")
    await owner.put(card_key(a, 1), b'{"display_name": "m"}')
    await owner.put(card_key(other, 2), b'{"display_name": "m"}')
    await register(owner, a, 1)  # an instance key is not a card
    cards = Collected(watch_model_cards(observer, endpoint=a))
    try:
        await cards.until(lambda: len(cards.events) == 1, "the card")
        assert cards.events[0] == CardEvent("added", a, 1, b'{"display_name": "m"}')
        await owner.delete(card_key(a, 1))
        await cards.until(lambda: len(cards.events) == 2, "the card's removal")
        assert cards.events[1] == CardEvent("removed", a, 1)
        assert cards.view() == {}
    finally:
        await cards.close()


async def test_malformed_keys_and_records_are_skipped(backend_pair, request):
    owner, observer = backend_pair
    a, _, _ = names(f"m{request.node.callspec.id}")
    await owner.put(f"v1/instances/{a.namespace}/backend/generate/not-hex", b"{}")
    await owner.put(f"v1/instances/{a.namespace}/too/short", b"{}")
    await owner.put(instance_key(a, 5), b"not json")
    good = await register(owner, a, 6)
    watch = Collected(watch_instances(observer, namespaces=[a.namespace]))
    try:
        await watch.until(lambda: len(watch.events) >= 1, "the good instance")
        await asyncio.sleep(0.8)
        assert watch.events == [InstanceEvent("added", a, 6, good)]
        assert await list_instances(observer, namespaces=[a.namespace]) == [good]
    finally:
        await watch.close()


async def test_a_scoped_watch_asks_the_backend_only_for_its_namespaces():
    asked: list[str] = []

    class Spy(MemDiscovery):
        def watch_prefix(self, prefix: str):  # type: ignore[override]
            asked.append(prefix)
            return super().watch_prefix(prefix)

    spy = Spy(2.0, MemStore())
    await spy.start()
    watch = Collected(watch_instances(spy, namespaces=["ns1", "ns2", "ns1"]))
    try:
        await asyncio.sleep(0.1)
        assert sorted(asked) == ["v1/instances/ns1/", "v1/instances/ns2/"]
    finally:
        await watch.close()
        await spy.close()


def test_scopes_are_validated():
    ep = EndpointId("a", "backend", "generate")
    assert scope_prefixes("cards") == ["v1/mdc/"]
    assert scope_prefixes("instances", endpoint=ep) == ["v1/instances/a/backend/generate/"]
    assert scope_prefixes("instances", ["a"], ep) == ["v1/instances/a/backend/generate/"]
    with pytest.raises(ValueError, match="outside"):
        scope_prefixes("instances", ["b"], ep)
    with pytest.raises(ValueError, match="empty"):
        scope_prefixes("instances", [])
    with pytest.raises(ValueError, match="invalid namespace"):
        scope_prefixes("instances", ["a/b"])
    with pytest.raises(TypeError):
        scope_prefixes("instances", "ab")


async def test_the_periodic_reconcile_corrects_what_the_watch_missed():
    store = MemStore()
    owner, observer = MemDiscovery(2.0, store), MemDiscovery(2.0, store)
    await owner.start()
    await observer.start()
    ep = EndpointId("rec", "backend", "generate")
    kept = await register(owner, ep, 1)
    await register(owner, ep, 2)
    watch = Collected(watch_instances(observer, namespaces=["rec"], reconcile_interval=0.3))
    try:
        await watch.until(lambda: len(watch.events) == 2, "both instances")
        # Changes whose events were lost (the mem store's watchers are not told).
        del store.keys[instance_key(ep, 2)]
        late = record(ep, 3)
        store.keys[instance_key(ep, 3)] = (owner.lease_id, msgspec.json.encode(late))
        await watch.until(lambda: len(watch.events) == 4, "the reconcile", timeout=5)
        assert watch.events[2:] == [InstanceEvent("removed", ep, 2), InstanceEvent("added", ep, 3, late)]
        assert watch.view() == {(ep, 1): kept, (ep, 3): late}
        await asyncio.sleep(0.7)  # later re-lists find nothing more to correct
        assert len(watch.events) == 4
    finally:
        await watch.close()
        await owner.close()
        await observer.close()


async def test_changes_during_a_reconcile_are_not_undone_by_its_older_listing():
    class SlowList(MemDiscovery):
        hold = False
        listed = asyncio.Event()
        release = asyncio.Event()

        async def get_prefix(self, prefix: str) -> dict[str, bytes]:
            view = await super().get_prefix(prefix)
            if self.hold:
                self.hold = False
                self.listed.set()
                await self.release.wait()  # the listing is now older than what follows
            return view

    store = MemStore()
    owner, observer = MemDiscovery(2.0, store), SlowList(2.0, store)
    await owner.start()
    await observer.start()
    ep = EndpointId("race", "backend", "generate")
    await register(owner, ep, 1)
    watch = Collected(watch_instances(observer, namespaces=["race"], reconcile_interval=0.2))
    try:
        await watch.until(lambda: len(watch.events) == 1, "the first instance")
        observer.hold = True
        await asyncio.wait_for(observer.listed.wait(), 5)
        second = await register(owner, ep, 2)
        await owner.delete(instance_key(ep, 1))
        await watch.until(lambda: len(watch.events) == 3, "the changes")
        observer.release.set()
        await asyncio.sleep(0.8)  # the held re-list ends, and later ones run
        assert watch.view() == {(ep, 2): second}
        assert len(watch.events) == 3
    finally:
        await watch.close()
        await owner.close()
        await observer.close()


async def test_etcd_restarted_with_its_data_lost_is_resynced(log_dir):
    etcd = EtcdServer(log_dir)
    etcd.start()
    ep = EndpointId("resync", "backend", "generate")
    survivor = EtcdDiscovery([etcd.endpoint], ttl=2.0)  # re-creates its lease and re-registers
    lost = EtcdDiscovery([etcd.endpoint], ttl=2.0)  # stops keeping its lease: its key is gone for good
    observer = EtcdDiscovery([etcd.endpoint], ttl=2.0)
    for d in (survivor, lost, observer):
        await d.start()
    watch = Collected(watch_instances(observer, namespaces=["resync"]))
    try:
        kept = await register(survivor, ep, 1)
        await register(lost, ep, 2)
        await watch.until(lambda: len(watch.view()) == 2, "both instances")
        assert lost._keepalive is not None
        lost._keepalive.cancel()
        recreated = asyncio.Event()
        survivor.on_lease_recreated(recreated.set)

        etcd.stop()
        shutil.rmtree(etcd.data_dir)  # a new, empty etcd on the same address
        Path(etcd.data_dir).mkdir()
        etcd.start()
        await asyncio.wait_for(recreated.wait(), 30)
        newcomer = EtcdDiscovery([etcd.endpoint], ttl=2.0)
        await newcomer.start()
        try:
            fresh = await register(newcomer, ep, 3)
            await watch.until(
                lambda: watch.view() == {(ep, 1): kept, (ep, 3): fresh},
                "the survivor, the newcomer and not the lost instance",
                timeout=30,
            )
        finally:
            await newcomer.close()
        assert InstanceEvent("removed", ep, 2) in watch.events
    finally:
        await watch.close()
        for d in (survivor, observer, lost):
            await d.close()
        etcd.cleanup()
