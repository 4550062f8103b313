"""KvRouter end to end: events or routing decisions in, selections and counters out."""

import random

import pytest

from dynamo.llm.kv_events import (
    KvEvent,
    KvEventBatch,
    KvStored,
    LoadMetrics,
    StoredBlock,
    compute_block_hashes,
)
from dynamo.router.indexer import ResyncRequest
from dynamo.router.kv_router import KvRouter, KvRouterConfig
from dynamo.router.selector import AllWorkersBusy
from dynamo.router.sync_events import RouterSyncEvent, decode_sync_event, encode_sync_events
from dynamo.router.worker_key import worker_key

BS = 16
WORKERS = [0x11, 0x22, 0x33]


def prompt(seed: int, blocks: int = 8, extra: int = 5) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(32000) for _ in range(blocks * BS + extra)]


def cache_event(worker: int, event_id: int, tokens: list[int], lora: str | None = None) -> KvEventBatch:
    """What an engine reports after computing ``tokens`` from scratch (engine hashes made up)."""
    local = compute_block_hashes(tokens, BS, lora)
    blocks = [StoredBlock((worker << 32) + i + event_id * 1000, h) for i, h in enumerate(local)]
    return KvEventBatch(worker, [KvEvent(event_id, KvStored(blocks))])


def router(**kw: object) -> KvRouter:
    r = KvRouter(KvRouterConfig(block_size=BS, **kw), rng=random.Random(0))  # type: ignore[arg-type]
    for w in WORKERS:
        r.add_worker(w, total_blocks=1000)
    return r


def test_routes_to_the_worker_holding_the_prefix_and_counts_hits() -> None:
    r = router()
    p = prompt(1)
    r.on_kv_events(cache_event(0x22, 1, p))
    sel = r.select(p, "req-1", WORKERS)
    assert sel.worker == 0x22 and sel.overlap_blocks == 8 and sel.request_blocks == 9
    assert r.counters.decisions == 1
    assert r.counters.prompt_blocks == 8 and r.counters.hit_rate == 1.0
    assert r.find_overlap(p).scores == {0x22: 8}


def test_load_spreads_identical_cold_prompts() -> None:
    r = router()
    chosen = [r.select(prompt(2), f"r{i}", WORKERS).worker for i in range(3)]
    assert sorted(chosen) == sorted(WORKERS)
    assert r.counters.hit_rate == 0.0


def test_lifecycle_updates_predicted_load() -> None:
    r = router()
    p = prompt(3)
    sel = r.select(p, "r1", WORKERS)
    assert r.sequences.prefill_tokens(sel.worker) == len(p)
    assert r.sequences.active_blocks(sel.worker) == 9
    r.on_first_token("r1")
    assert r.sequences.prefill_tokens(sel.worker) == 0
    r.on_finished("r1")
    assert r.sequences.active_blocks(sel.worker) == 0


def test_lora_prompts_do_not_match_base_model_blocks() -> None:
    r = router()
    p = prompt(4)
    r.on_kv_events(cache_event(0x11, 1, p))
    assert r.select(p, "a", WORKERS, lora_name="adapter").overlap_blocks == 0
    r.on_kv_events(cache_event(0x33, 1, p, lora="adapter"))
    assert r.select(p, "b", WORKERS, lora_name="adapter").worker == 0x33


def test_threshold_from_load_metrics_refuses_when_all_busy() -> None:
    r = KvRouter(KvRouterConfig(block_size=BS, active_decode_blocks_threshold=0.5))
    r.on_load_metrics(LoadMetrics(worker_id=0x11, kv_total_blocks=16))
    r.select(prompt(5), "a", [0x11])  # 9 of 16 blocks now active: over half
    with pytest.raises(AllWorkersBusy):
        r.select(prompt(6), "b", [0x11])
    assert r.counters.all_busy == 1 and r.counters.decisions == 1
    r.on_finished("a")
    assert r.select(prompt(6), "b", [0x11]).worker == 0x11


def test_pinned_and_dp_rank_keys() -> None:
    r = router()
    rank1 = worker_key(0x11, 1)
    sel = r.select(prompt(7), "a", [*WORKERS, rank1], pinned=rank1)
    assert (sel.instance_id, sel.dp_rank) == (0x11, 1)
    assert r.sequences.active_requests(rank1) == 1


def test_remove_worker_drops_its_cache_and_load() -> None:
    r = router()
    p = prompt(8)
    r.on_kv_events(cache_event(0x22, 1, p))
    r.select(p, "a", WORKERS)
    r.remove_worker(0x22)
    assert r.find_overlap(p).scores == {}
    assert r.sequences.active_requests(0x22) == 0


def test_remove_instance_drops_all_its_ranks() -> None:
    r = router()
    p = prompt(14)
    for rank in (0, 1, 2):
        batch = cache_event(0x11, 1, p)
        batch.dp_rank = rank
        r.on_kv_events(batch)
    r.on_kv_events(cache_event(0x22, 1, p))
    r.select(p, "a", [worker_key(0x11, 2)])
    r.remove_instance(0x11)
    assert r.find_overlap(p).scores == {0x22: 8}
    assert r.sequences.active_requests(worker_key(0x11, 2)) == 0
    assert 0x11 not in r.total_blocks and 0x22 in r.total_blocks


def test_resync_requests_reach_the_callback() -> None:
    requests: list[ResyncRequest] = []
    r = KvRouter(KvRouterConfig(block_size=BS), on_resync_needed=requests.append)
    r.on_kv_events(cache_event(0x11, 1, prompt(9)))
    r.on_kv_events(cache_event(0x11, 4, prompt(10)))
    assert [(q.worker, q.after_event_id) for q in requests] == [(0x11, 1)]


def test_without_kv_events_routed_prefixes_attract_followups_until_ttl() -> None:
    now = [0.0]
    r = KvRouter(
        KvRouterConfig(block_size=BS, use_kv_events=False, ttl_s=60.0),
        rng=random.Random(1),
        clock=lambda: now[0],
    )
    p = prompt(11)
    first = r.select(p, "a", WORKERS)
    r.on_finished("a")
    r.on_kv_events(cache_event(0x11, 1, prompt(12)))  # ignored in this mode
    again = r.select([*p, 1, 2, 3], "b", WORKERS)
    assert again.worker == first.worker and again.overlap_blocks == 8
    r.on_finished("b")
    now[0] += 61
    assert r.find_overlap(p).scores == {}


def test_replica_sync_gives_the_same_load_view() -> None:
    wire: list[bytes] = []

    def publish(event: RouterSyncEvent) -> None:
        wire.append(encode_sync_events(event))

    a = KvRouter(KvRouterConfig(block_size=BS, router_id=1), rng=random.Random(2), publish=publish)
    b = KvRouter(KvRouterConfig(block_size=BS, router_id=2), rng=random.Random(3))
    shared = prompt(13, blocks=4)
    for i in range(12):
        tokens = shared + prompt(100 + i, blocks=i % 3)
        a.select(tokens, f"r{i}", WORKERS)
        if i % 2:
            a.on_first_token(f"r{i}")
        if i % 5 == 0:
            a.on_finished(f"r{i}")
    for payload in wire:
        b.apply_sync_event(decode_sync_event(payload))
    for w in WORKERS:
        assert b.sequences.active_blocks(w) == a.sequences.active_blocks(w)
        assert b.sequences.prefill_tokens(w) == a.sequences.prefill_tokens(w)
        assert b.sequences.active_requests(w) == a.sequences.active_requests(w)
    # With the same view, b's next decision weighs a's load: it avoids a's busiest worker.
    busiest = max(WORKERS, key=a.sequences.active_blocks)
    assert b.select(prompt(999), "x", WORKERS).worker != busiest


def test_replicas_get_distinct_router_ids_by_default() -> None:
    assert KvRouterConfig().router_id != KvRouterConfig().router_id


def test_blocks_already_active_on_a_worker_are_not_its_decode_cost_twice() -> None:
    # 0x11 caches a 10-block system prompt and serves two requests that share it; the others are idle.
    r = router()
    system = prompt(20, blocks=10, extra=0)
    r.on_kv_events(cache_event(0x11, 1, system))
    for i in range(2):
        r.select([*system, *prompt(30 + i, blocks=1, extra=0)], f"active-{i}", [0x11])
        r.on_first_token(f"active-{i}")
    assert r.sequences.active_blocks(0x11) == 12  # the shared 10 count once
    # A third request on that prompt adds one block there, not eleven: the cached worker stays cheapest
    # (counting all 11 would make it 1 + 12 + 11 = 24 against an idle worker's 11 + 11 = 22).
    sel = r.select([*system, *prompt(40, blocks=1, extra=0)], "new", WORKERS)
    assert sel.worker == 0x11 and sel.overlap_blocks == 10
    assert sel.decode_cost == 12 + 1 and sel.prefill_cost == 1
