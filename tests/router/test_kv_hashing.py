"""Block hashing the router relies on, checked against XXH3 computed independently in the test."""

import struct

import xxhash

from dynamo.llm.kv_events import compute_block_hashes, compute_sequence_hashes

SEED = 1337


def xxh3(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data, seed=SEED)


def local_hash(tokens: list[int], salt: bytes = b"") -> int:
    return xxh3(struct.pack(f"<{len(tokens)}I", *tokens) + salt)


def test_local_hashes_are_xxh3_over_little_endian_u32_tokens() -> None:
    tokens = list(range(1, 35))  # two full blocks of 16 and a partial one
    assert compute_block_hashes(tokens, 16) == [local_hash(tokens[:16]), local_hash(tokens[16:32])]


def test_partial_trailing_block_is_not_hashed() -> None:
    assert compute_block_hashes(list(range(15)), 16) == []
    assert len(compute_block_hashes(list(range(47)), 16)) == 2


def test_large_token_ids_use_all_32_bits() -> None:
    tokens = [0xFFFFFFFF, 0x80000000, 1, 0] * 4
    assert compute_block_hashes(tokens, 16) == [local_hash(tokens)]


def test_sequence_hashes_chain_le64_pairs() -> None:
    local = [local_hash([7] * 16), local_hash([8] * 16), local_hash([9] * 16)]
    s1 = xxh3(struct.pack("<QQ", local[0], local[1]))
    s2 = xxh3(struct.pack("<QQ", s1, local[2]))
    assert compute_sequence_hashes(local) == [local[0], s1, s2]


def test_lora_name_salts_local_hashes() -> None:
    tokens = list(range(1, 17))
    salted = compute_block_hashes(tokens, 16, "my-lora")
    assert salted == [local_hash(tokens, b"my-lora")]
    assert salted != compute_block_hashes(tokens, 16)


def test_fixed_vectors() -> None:
    # Computed once and pasted: any change to the hashing scheme breaks routing compatibility.
    tokens = [*range(1, 33), 99, 100]
    local = compute_block_hashes(tokens, 16)
    assert local == [0xEA06FC71A5EE6E88, 0x1FBF39BD106BE0B5]
    assert compute_sequence_hashes(local) == [0xEA06FC71A5EE6E88, 0xAD01835A37DD294C]
    assert compute_block_hashes(tokens, 16, "my-lora") == [0x8F6EC35235712F80, 0x53080E949678F7CB]
