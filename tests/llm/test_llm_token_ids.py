"""A prompt's token ids as one u32 array: built once, sent over the request plane as bytes, rebuilt
exactly on the worker; older list-form senders still understood; bad forms refused by name."""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import AsyncGenerator
from typing import Any

import msgspec
import pytest

from dynamo.llm.kv_events import compute_block_hashes
from dynamo.llm.protocols import PreprocessedRequest, request_from_wire, request_to_wire
from dynamo.llm.token_ids import as_token_ids, from_wire
from dynamo.runtime.request_plane import RequestContext, RequestPlaneClient, RequestPlaneServer

pytestmark = pytest.mark.timeout(60)

IDS = [0, 1, 255, 256, 65_535, 65_536, 49_151, 2**32 - 1]


def test_a_list_becomes_one_u32_array_and_an_array_stays_the_same_object() -> None:
    ids = as_token_ids(IDS)
    assert isinstance(ids, array) and ids.typecode == "I" and ids.itemsize == 4 and list(ids) == IDS
    assert as_token_ids(ids) is ids
    assert list(as_token_ids(array("q", [3, 4]))) == [3, 4]  # another array type is converted


@pytest.mark.parametrize("bad", [[-1], [2**32], [1, "2"], [1.5]])
def test_ids_outside_u32_or_not_ints_are_refused(bad: list[Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        as_token_ids(bad)
    with pytest.raises((ValueError, TypeError)):
        PreprocessedRequest("r", "m", bad)


def test_a_request_carries_its_ids_as_little_endian_bytes_and_decodes_to_the_same_request() -> None:
    req = PreprocessedRequest("r", "m", IDS)
    wire = request_to_wire(req)
    raw = msgspec.msgpack.decode(wire)["token_ids"]
    assert isinstance(raw, bytes) and raw == b"".join(i.to_bytes(4, "little") for i in IDS)
    for form in (wire, msgspec.msgpack.decode(wire)):  # as bytes, and as a server's builtins
        back = request_from_wire(form)
        assert back == req and isinstance(back.token_ids, array) and list(back.token_ids) == IDS


def test_a_list_form_request_from_an_older_sender_is_understood() -> None:
    old = msgspec.msgpack.encode({"request_id": "r", "model": "m", "token_ids": IDS})
    assert list(request_from_wire(old).token_ids) == IDS
    assert list(request_from_wire(msgspec.msgpack.decode(old)).token_ids) == IDS


@pytest.mark.parametrize("bad", [b"\x01\x00\x00", [-1], ["x"], 7, None])
def test_a_malformed_token_ids_field_is_a_validation_error_naming_it(bad: Any) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.token_ids"):
        request_from_wire({"request_id": "r", "model": "m", "token_ids": bad})
    with pytest.raises((ValueError, TypeError)):
        from_wire(bad)


def test_block_hashes_of_the_array_equal_those_of_the_list() -> None:
    ids = [(i * 7919) % 49_152 for i in range(1000)]
    assert compute_block_hashes(as_token_ids(ids), 16) == compute_block_hashes(ids, 16)
    assert compute_block_hashes(as_token_ids(ids), 16, "lora") == compute_block_hashes(ids, 16, "lora")


async def test_a_long_prompt_crosses_a_real_request_plane_as_one_buffer() -> None:
    seen: list[Any] = []

    async def generate(body: Any, ctx: RequestContext) -> AsyncGenerator[int, None]:
        seen.append(body["token_ids"])
        yield len(request_from_wire(body).token_ids)

    server = RequestPlaneServer("127.0.0.1", 0)
    server.register("t.w.generate", generate)
    await server.start()
    client = RequestPlaneClient()
    try:
        ids = [(i * 104_729) % 49_152 for i in range(32_000)]
        req = PreprocessedRequest("r", "m", ids)
        address = f"127.0.0.1:{server.port}"
        for _ in range(2):  # the first may go before the worker said it reads bytes: a list then
            stream = await client.stream(address, "t.w.generate", req, {})
            assert [item async for item in stream] == [32_000]
            await asyncio.wait_for(client._conns[address].features.wait(), 5)
        assert isinstance(seen[-1], bytes) and len(seen[-1]) == 4 * 32_000
        assert all(list(from_wire(body)) == ids for body in seen)
    finally:
        await client.close()
        await server.stop()
