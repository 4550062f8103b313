"""ActiveSequences: predicted active blocks and prefill tokens, shared prefixes, replica sync."""

from dynamo.llm.kv_events import compute_block_hashes, compute_sequence_hashes
from dynamo.router.sequences import ActiveSequences
from dynamo.router.sync_events import (
    RouterSyncEvent,
    SyncAddRequest,
    SyncFree,
    SyncPrefillDone,
    decode_sync_event,
    decode_sync_events,
    encode_sync_events,
)
from dynamo.router.worker_key import worker_key

BS = 4


def seq_hashes(tokens: list[int]) -> list[int]:
    return compute_sequence_hashes(compute_block_hashes(tokens, BS))


SYSTEM = list(range(100, 108))  # two full blocks shared by the prompts below
PROMPT_1 = [*SYSTEM, 1, 2, 3, 4, 5]  # 13 tokens: 3 full blocks + 1 partial
PROMPT_2 = [*SYSTEM, 9, 9, 9, 9]  # 12 tokens: 3 full blocks


def add(seqs: ActiveSequences, rid: str, worker: int, tokens: list[int], overlap: int = 0) -> None:
    seqs.add_request(rid, worker, len(tokens), overlap, seq_hashes(tokens))


def test_add_counts_blocks_and_uncached_prefill_tokens() -> None:
    seqs = ActiveSequences(BS)
    add(seqs, "r1", 1, PROMPT_1, overlap=2)
    assert seqs.active_blocks(1) == 4  # 3 hashed + the partial block
    assert seqs.prefill_tokens(1) == 13 - 2 * BS
    assert seqs.active_requests(1) == 1
    assert seqs.worker_of("r1") == 1
    assert seqs.active_blocks(2) == 0 and seqs.prefill_tokens(2) == 0


def test_shared_prefix_on_one_worker_counts_once() -> None:
    seqs = ActiveSequences(BS)
    add(seqs, "r1", 1, PROMPT_1)
    add(seqs, "r2", 1, PROMPT_2)
    assert seqs.active_blocks(1) == 4 + 1  # r2 adds only its third block
    add(seqs, "r3", 2, PROMPT_2)
    assert seqs.active_blocks(2) == 3  # other workers share nothing
    seqs.free("r1")
    assert seqs.active_blocks(1) == 3  # the shared prefix stays for r2
    seqs.free("r2")
    assert seqs.active_blocks(1) == 0


def test_prefill_done_then_free() -> None:
    seqs = ActiveSequences(BS)
    add(seqs, "r1", 1, PROMPT_1)
    add(seqs, "r2", 1, PROMPT_2, overlap=1)
    assert seqs.prefill_tokens(1) == 13 + 8
    seqs.mark_prefill_completed("r1")
    seqs.mark_prefill_completed("r1")  # idempotent
    assert seqs.prefill_tokens(1) == 8
    seqs.free("r2")  # freed before its first token: its prefill goes too
    assert seqs.prefill_tokens(1) == 0
    seqs.free("r2")  # unknown: no-op
    seqs.mark_prefill_completed("nope")
    assert seqs.active_blocks(1) == 4 and len(seqs) == 1


def test_rerouting_a_request_id_moves_it() -> None:
    seqs = ActiveSequences(BS)
    add(seqs, "r1", 1, PROMPT_1)
    add(seqs, "r1", 2, PROMPT_1)
    assert seqs.active_blocks(1) == 0 and seqs.prefill_tokens(1) == 0
    assert seqs.active_blocks(2) == 4 and seqs.worker_of("r1") == 2


def test_prompt_without_hashes_counts_private_blocks() -> None:
    seqs = ActiveSequences(BS)
    seqs.add_request("r1", 1, token_count=9, overlap_blocks=0)
    assert seqs.active_blocks(1) == 3


def test_remove_worker_and_stale_requests() -> None:
    now = [0.0]
    seqs = ActiveSequences(BS, clock=lambda: now[0])
    add(seqs, "old", 1, PROMPT_1)
    now[0] = 100.0
    add(seqs, "new", 2, PROMPT_2)
    assert seqs.free_stale(max_age_s=50.0) == ["old"]
    assert seqs.active_blocks(1) == 0
    assert seqs.remove_worker(2) == ["new"]
    assert seqs.active_blocks(2) == 0 and len(seqs) == 0


def test_local_changes_publish_sync_events() -> None:
    events: list[RouterSyncEvent] = []
    seqs = ActiveSequences(BS, router_id=11, publish=events.append)
    add(seqs, "r1", 1, PROMPT_1, overlap=1)
    seqs.mark_prefill_completed("r1")
    seqs.free("r1")
    seqs.free("r1")  # nothing to free: nothing published
    assert events == [
        SyncAddRequest(11, "r1", 1, 0, seq_hashes(PROMPT_1), 1, 13 - BS),
        SyncPrefillDone(11, "r1"),
        SyncFree(11, "r1"),
    ]


def test_sync_events_round_trip_through_msgpack() -> None:
    events: list[RouterSyncEvent] = [
        SyncAddRequest(1, "a", 2**64 - 1, 3, [2**64 - 1, 0], 1, 7),
        SyncPrefillDone(1, "a"),
        SyncFree(1, "a"),
    ]
    assert decode_sync_events(encode_sync_events(events)) == events
    assert decode_sync_event(encode_sync_events(events[0])) == events[0]


def test_replica_applies_remote_events_to_the_same_view() -> None:
    wire: list[bytes] = []
    a = ActiveSequences(BS, router_id=1, publish=lambda e: wire.append(encode_sync_events(e)))
    b = ActiveSequences(BS, router_id=2)
    add(a, "x", 1, PROMPT_1)
    add(a, "y", 1, PROMPT_2, overlap=2)
    add(b, "x", 1, PROMPT_2)  # same request id on the other replica: no collision
    for payload in wire:
        b.apply_sync(decode_sync_event(payload))
    assert b.active_blocks(1) == a.active_blocks(1)  # PROMPT_2's blocks were shared already
    assert b.prefill_tokens(1) == a.prefill_tokens(1) + len(PROMPT_2)
    wire.clear()
    a.mark_prefill_completed("x")
    a.free("y")
    for payload in wire:
        b.apply_sync(decode_sync_event(payload))
    b.free("x")
    assert (b.active_blocks(1), b.prefill_tokens(1)) == (a.active_blocks(1), a.prefill_tokens(1))
    assert b.drop_replica(1) == 1
    assert b.active_blocks(1) == 0 and len(b) == 0


def test_own_echo_is_ignored() -> None:
    events: list[RouterSyncEvent] = []
    seqs = ActiveSequences(BS, router_id=5, publish=events.append)
    add(seqs, "r1", 1, PROMPT_1)
    seqs.apply_sync(events[0])
    assert seqs.active_requests(1) == 1


def test_data_parallel_worker_keys_survive_the_wire() -> None:
    wire: list[bytes] = []
    a = ActiveSequences(BS, router_id=1, publish=lambda e: wire.append(encode_sync_events(e)))
    b = ActiveSequences(BS, router_id=2)
    key = worker_key(2**64 - 1, 3)
    add(a, "x", key, PROMPT_1)
    b.apply_sync(decode_sync_event(wire[0]))
    assert b.active_blocks(key) == 4 and b.prefill_tokens(key) == 13
