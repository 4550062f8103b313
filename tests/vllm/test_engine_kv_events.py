"""vLLM KV events -> our KvEventBatch, over a real ZMQ socket, without starting an engine."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")

import msgspec
import zmq
from vllm.distributed.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    ZmqEventPublisher,
)

from dynamo.llm.kv_events import KvCleared, KvEventBatch, KvRemoved, KvStored, compute_block_hashes
from dynamo.vllm.kv_events import block_hash_to_int, convert_event, kv_event_subscriber

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(60)]

BLOCK = 4


def stored(
    hashes: list[bytes | int], tokens: list[int], parent: bytes | int | None = None, **kw
) -> BlockStored:
    fields: dict = {"lora_id": None, "medium": "GPU", "lora_name": None}
    fields.update(kw)
    return BlockStored(
        block_hashes=hashes, parent_block_hash=parent, token_ids=tokens, block_size=BLOCK, **fields
    )


def test_block_hashes_become_64_bit_ints_the_way_vllm_does():
    digest = bytes(range(32))
    assert block_hash_to_int(digest) == int.from_bytes(digest, "big") & (2**64 - 1)
    assert block_hash_to_int(digest) == int.from_bytes(digest[-8:], "big")
    assert block_hash_to_int(12345) == 12345
    assert block_hash_to_int(-1) == 2**64 - 1


def test_block_stored_gets_our_local_hashes():
    tokens = list(range(100, 108))
    data = convert_event(stored([11, 22], tokens, parent=7))
    assert isinstance(data, KvStored)
    assert data.parent_hash == 7
    assert [b.block_hash for b in data.blocks] == [11, 22]
    assert [b.tokens_hash for b in data.blocks] == compute_block_hashes(tokens, BLOCK)


def test_lora_name_salts_the_local_hash():
    tokens = list(range(4))
    data = convert_event(stored([1], tokens, lora_name="adapter"))
    assert isinstance(data, KvStored)
    assert data.blocks[0].tokens_hash == compute_block_hashes(tokens, BLOCK, "adapter")[0]
    assert data.blocks[0].tokens_hash != compute_block_hashes(tokens, BLOCK)[0]


def test_removed_cleared_and_offload_tiers():
    removed = convert_event(BlockRemoved(block_hashes=[b"\x01" * 32, 5], medium="GPU"))
    assert isinstance(removed, KvRemoved)
    assert removed.block_hashes == [block_hash_to_int(b"\x01" * 32), 5]
    assert isinstance(convert_event(AllBlocksCleared()), KvCleared)
    assert convert_event(stored([1], [0, 1, 2, 3], medium="CPU")) is None  # an offload tier
    assert convert_event(BlockRemoved(block_hashes=[1], medium=None)) is not None


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_relay_decodes_vllm_publisher_batches(tmp_path: Path):
    endpoint = f"ipc://{tmp_path}/kv"
    got: list[KvEventBatch] = []
    relay = kv_event_subscriber(endpoint, worker_id=42, sink=got.append, topic="kv")
    relay.start()  # connecting before the publisher binds is fine
    publisher = ZmqEventPublisher(data_parallel_rank=0, endpoint=endpoint, topic="kv")
    try:
        tokens = list(range(8))
        first = KVEventBatch(ts=time.time(), events=[stored([1, 2], tokens)])
        # PUB/SUB drops what is sent before the subscription arrives: publish until one lands.
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            publisher.publish(first)
            await asyncio.sleep(0.1)
        assert got, "no batch relayed"
        await asyncio.sleep(0.3)  # let repeats still in flight arrive before clearing
        got.clear()
        publisher.publish(
            KVEventBatch(
                ts=time.time(), events=[BlockRemoved(block_hashes=[2], medium="GPU"), AllBlocksCleared()]
            )
        )
        await wait_for(lambda: len(got) == 1)
    finally:
        await relay.stop()
        publisher.shutdown()
    batch = got[0]
    assert batch.worker_id == 42 and batch.dp_rank == 0
    assert [type(e.data) for e in batch.events] == [KvRemoved, KvCleared]
    ids = [e.event_id for e in batch.events]
    assert ids == [ids[0], ids[0] + 1]


async def test_sequence_gap_skips_event_ids(tmp_path: Path):
    endpoint = f"ipc://{tmp_path}/kv"
    got: list[KvEventBatch] = []
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(endpoint)
    relay = kv_event_subscriber(endpoint, worker_id=1, sink=got.append, topic="kv")
    relay.start()
    encoder = msgspec.msgpack.Encoder()

    def send(seq: int) -> None:
        batch = KVEventBatch(ts=0.0, events=[AllBlocksCleared()])
        pub.send_multipart([b"kv", seq.to_bytes(8, "big"), encoder.encode(batch)])

    try:
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            send(0)
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        got.clear()
        send(1)
        send(5)  # batches 2..4 were lost
        await wait_for(lambda: len(got) == 2)
    finally:
        await relay.stop()
        pub.close(linger=0)
        ctx.term()
    assert got[1].events[0].event_id - got[0].events[0].event_id == 4
