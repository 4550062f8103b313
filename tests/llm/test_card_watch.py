"""``dynamo.llm.card_watch``: the runtime's raw card events decoded to ``ModelDeploymentCard``, a
card that does not decode skipped, scoped like the runtime's watch (in-process mem discovery)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from dynamo.llm.card_watch import ModelCardEvent, watch_model_cards
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.runtime import DistributedRuntime, EndpointId, RuntimeConfig
from dynamo.runtime.discovery.mem import MemDiscovery, MemStore

pytestmark = pytest.mark.timeout(30)


async def runtime(store: MemStore, namespace: str) -> DistributedRuntime:
    config = RuntimeConfig(namespace=namespace, discovery_backend="mem", tcp_host="127.0.0.1")
    return await DistributedRuntime.create(config, MemDiscovery(2.0, store))


async def collect(events: AsyncIterator[ModelCardEvent], into: list[ModelCardEvent]) -> None:
    async for event in events:
        into.append(event)


async def until(check, what: str) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.01)


async def nothing(_request, _ctx):  # type: ignore[no-untyped-def]
    yield {}


async def test_cards_are_decoded_and_a_bad_one_is_skipped(smollm2_card: ModelDeploymentCard, caplog) -> None:
    store = MemStore()
    worker, other, observer = (
        await runtime(store, "cards-a"),
        await runtime(store, "cards-b"),
        await runtime(store, "cards-a"),
    )
    bad = EndpointId("cards-a", "broken", "generate")
    good = EndpointId("cards-a", "backend", "generate")
    tampered = smollm2_card.to_json().replace(b'"context_length":', b'"context_length":1', 1)
    await worker.serve_endpoint(bad, nothing, model_card=tampered)
    await other.serve_endpoint("cards-b.backend.generate", nothing, model_card=smollm2_card.to_json())
    events: list[ModelCardEvent] = []
    task = asyncio.create_task(collect(watch_model_cards(observer, namespaces=["cards-a"]), events))
    try:
        with caplog.at_level(logging.ERROR, logger="dynamo.llm.card_watch"):
            await worker.serve_endpoint(good, nothing, model_card=smollm2_card.to_json())
            await until(lambda: len(events) == 1, "the good card")
        assert "wrong checksum" in caplog.text
        [added] = events
        assert (added.kind, added.endpoint, added.instance_id) == ("added", good, worker.instance_id)
        assert added.card is not None and added.card.checksum == smollm2_card.checksum

        # The broken card replaced by a good one: its first card to decode, so "added".
        await worker.serve_endpoint(bad, nothing, model_card=smollm2_card.to_json())
        await until(lambda: len(events) == 2, "the repaired card")
        assert (events[1].kind, events[1].endpoint) == ("added", bad)

        await worker.deregister_all()
        await until(lambda: len(events) == 4, "the removals")
        assert sorted((e.kind, e.endpoint.component) for e in events[2:]) == [
            ("removed", "backend"),
            ("removed", "broken"),
        ]
        await asyncio.sleep(0.1)
        assert len(events) == 4  # cards-b's card never shows up
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for rt in (worker, other, observer):
            await rt.shutdown()
