"""KvIndexer: stored/removed/cleared events, parent chains, event-id gaps and resync."""

import random

from dynamo.llm.kv_events import (
    KvCleared,
    KvEvent,
    KvEventBatch,
    KvRemoved,
    KvStored,
    StoredBlock,
    compute_sequence_hashes,
)
from dynamo.router.indexer import KvIndexer, ResyncRequest
from dynamo.router.worker_key import worker_key

# Local (token) hashes of a few blocks; a prompt is a list of them.
A, B, C, D, E, F = 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6


def engine_hash(worker: int, path: list[int]) -> int:
    """An engine-style chained hash, different per worker (engines need not agree with us)."""
    return hash((worker, *path)) & ((1 << 64) - 1)


def stored(event_id: int, worker: int, path: list[int], start: int = 0) -> KvEvent:
    """Store ``path[start:]`` under the block ``path[start - 1]`` (root when ``start`` is 0)."""
    parent = engine_hash(worker, path[:start]) if start else None
    blocks = [StoredBlock(engine_hash(worker, path[: i + 1]), path[i]) for i in range(start, len(path))]
    return KvEvent(event_id, KvStored(blocks, parent))


def removed(event_id: int, worker: int, *paths: list[int]) -> KvEvent:
    return KvEvent(event_id, KvRemoved([engine_hash(worker, p) for p in paths]))


def batch(worker: int, *events: KvEvent, dp_rank: int = 0) -> KvEventBatch:
    return KvEventBatch(worker, list(events), dp_rank)


def test_stored_chain_scores_leading_blocks() -> None:
    index = KvIndexer()
    index.apply(batch(1, stored(1, 1, [A, B, C])))
    assert index.find_matches([A, B, C]).scores == {1: 3}
    assert index.find_matches([A, B, C, D]).scores == {1: 3}
    assert index.find_matches([A, B, F]).scores == {1: 2}
    assert index.find_matches([B, C]).scores == {}
    assert index.find_matches([]).scores == {}
    assert index.find_matches([A, B]).tree_sizes == {1: 3}


def test_local_and_sequence_hash_queries_agree() -> None:
    index = KvIndexer()
    index.apply(batch(1, stored(1, 1, [A, B, C, D])))
    index.apply(batch(2, stored(1, 2, [A, B, E])))
    for prompt in ([A, B, C, D], [A, B, E, F], [A], [F, A]):
        by_local = index.find_matches(prompt)
        assert by_local == index.find_matches_sequence(compute_sequence_hashes(prompt))


def test_store_under_parent_extends_the_chain() -> None:
    index = KvIndexer()
    index.apply(batch(1, stored(1, 1, [A, B]), stored(2, 1, [A, B, C, D], start=2)))
    assert index.find_matches([A, B, C, D]).scores == {1: 4}


def test_branching_tree_scores_each_worker_along_its_branch() -> None:
    index = KvIndexer()
    index.apply(batch(1, stored(1, 1, [A, B, C])))
    index.apply(batch(2, stored(1, 2, [A, B, D])))
    index.apply(batch(3, stored(1, 3, [A, E])))
    assert index.find_matches([A, B, C]).scores == {1: 3, 2: 2, 3: 1}
    assert index.find_matches([A, B, D, F]).scores == {1: 2, 2: 3, 3: 1}
    assert index.find_matches([A, E]).scores == {1: 1, 2: 1, 3: 2}
    assert index.find_matches([E]).scores == {}
    assert index.num_nodes == 5  # A, AB, ABC, ABD, AE


def test_same_content_under_different_engine_hashes_shares_nodes() -> None:
    index = KvIndexer()
    index.apply(batch(1, stored(1, 1, [A, B])))
    index.apply(batch(2, stored(1, 2, [A, B])))
    assert engine_hash(1, [A]) != engine_hash(2, [A])
    assert index.num_nodes == 2
    assert index.find_matches([A, B]).scores == {1: 2, 2: 2}


def test_removed_block_truncates_only_that_worker() -> None:
    index = KvIndexer()
    index.apply(batch(1, stored(1, 1, [A, B, C])))
    index.apply(batch(2, stored(1, 2, [A, B])))
    index.apply(batch(1, removed(2, 1, [A, B])))
    assert index.find_matches([A, B, C]).scores == {1: 1, 2: 2}
    assert index.tree_size(1) == 2
    # Storing the block again reconnects the worker's deeper block.
    index.apply(batch(1, stored(3, 1, [A, B], start=1)))
    assert index.find_matches([A, B, C]).scores == {1: 3, 2: 2}


def test_node_without_holders_is_deleted() -> None:
    index = KvIndexer()
    index.apply(batch(1, stored(1, 1, [A, B])))
    index.apply(batch(1, removed(2, 1, [A, B], [A])))
    assert index.num_nodes == 0
    assert index.find_matches([A, B]).scores == {}


def test_cleared_forgets_the_workers_blocks_and_keeps_counting_ids() -> None:
    index = KvIndexer()
    index.apply(batch(1, stored(1, 1, [A, B])))
    index.apply(batch(2, stored(1, 2, [A])))
    index.apply(batch(1, KvEvent(2, KvCleared())))
    assert index.find_matches([A, B]).scores == {2: 1}
    assert index.last_event_id(1) == 2
    index.apply(batch(1, stored(3, 1, [C])))
    assert not index.needs_resync(1)
    assert index.find_matches([C]).scores == {1: 1}


def test_unknown_parent_is_dropped_and_asks_for_a_snapshot() -> None:
    requests: list[ResyncRequest] = []
    index = KvIndexer(on_resync_needed=requests.append)
    index.apply(batch(1, stored(1, 1, [A, B, C], start=2)))  # parent AB never seen
    assert index.find_matches([A, B, C]).scores == {}
    assert index.needs_resync(1)
    assert index.stats.unknown_parents == 1
    assert requests == index.pending_resyncs()
    assert len(requests) == 1 and requests[0].worker == 1 and requests[0].after_event_id is None
    index.apply(batch(1, stored(2, 1, [D, E], start=1)))  # another orphan: no second request
    assert len(requests) == 1


def test_event_id_gap_requests_a_replay_and_closes_when_filled() -> None:
    requests: list[ResyncRequest] = []
    index = KvIndexer(on_resync_needed=requests.append)
    index.apply(batch(1, stored(1, 1, [A]), stored(2, 1, [A, B], start=1)))
    index.apply(batch(1, stored(5, 1, [D])))  # 3 and 4 lost
    assert index.needs_resync(1)
    assert requests == [ResyncRequest(1, 2, "event id jumped from 2 to 5")]
    assert index.find_matches([D]).scores == {1: 1}  # applied anyway
    assert index.last_event_id(1) == 2
    # The replay fills the hole; 5 is then already applied and is skipped.
    index.apply(batch(1, stored(3, 1, [A, B, C], start=2), removed(4, 1, [A]), stored(5, 1, [D])))
    assert not index.needs_resync(1)
    assert index.last_event_id(1) == 5
    assert index.stats.duplicate_events == 1
    assert index.find_matches([A, B, C]).scores == {}  # A was removed by event 4
    assert index.find_matches([D]).scores == {1: 1}


def test_duplicate_event_ids_are_skipped() -> None:
    index = KvIndexer()
    index.apply(batch(1, stored(1, 1, [A]), stored(2, 1, [B])))
    index.apply(batch(1, removed(2, 1, [B])))  # a re-delivered id 2 is not applied
    assert index.find_matches([B]).scores == {1: 1}
    assert index.stats.duplicate_events == 1
    assert not index.needs_resync(1)


def test_snapshot_replaces_the_workers_view() -> None:
    index = KvIndexer()
    index.apply(batch(1, stored(1, 1, [A, B]), stored(2, 1, [C, D], start=1)))  # orphan at 2
    assert index.needs_resync(1)
    index.resync(batch(1, stored(9, 1, [A, B, C]), stored(9, 1, [E])))
    assert not index.needs_resync(1)
    assert index.last_event_id(1) == 9
    assert index.find_matches([A, B, C]).scores == {1: 3}
    assert index.find_matches([E]).scores == {1: 1}
    assert index.tree_size(1) == 4
    index.apply(batch(1, stored(10, 1, [A, B, C, D], start=3)))
    assert index.find_matches([A, B, C, D]).scores == {1: 4}


def test_remove_worker_frees_its_nodes_and_its_bit() -> None:
    index = KvIndexer()
    index.apply(batch(1, stored(1, 1, [A, B, C])))
    index.apply(batch(2, stored(1, 2, [A])))
    index.remove_worker(1)
    assert index.num_nodes == 1
    assert index.find_matches([A, B, C]).scores == {2: 1}
    assert index.workers() == [2]
    assert index.last_event_id(1) is None
    index.apply(batch(3, stored(1, 3, [E])))  # reuses worker 1's bit, inherits nothing
    assert index.find_matches([A, B, C]).scores == {2: 1}
    assert index.find_matches([E]).scores == {3: 1}


def test_clear_worker_keeps_event_tracking() -> None:
    index = KvIndexer()
    index.apply(batch(1, stored(4, 1, [A])))
    index.clear_worker(1)
    assert index.find_matches([A]).scores == {}
    assert index.last_event_id(1) == 4


def test_data_parallel_ranks_are_separate_workers() -> None:
    index = KvIndexer()
    index.apply(batch(7, stored(1, 7, [A, B])))
    index.apply(batch(7, stored(1, 7, [A]), dp_rank=1))
    assert index.find_matches([A, B]).scores == {7: 2, worker_key(7, 1): 1}


def test_early_exit_stops_when_one_worker_is_left() -> None:
    index = KvIndexer()
    index.apply(batch(1, stored(1, 1, [A, B, C, D])))
    index.apply(batch(2, stored(1, 2, [A])))
    assert index.find_matches([A, B, C, D]).scores == {1: 4, 2: 1}
    early = index.find_matches([A, B, C, D], early_exit=True).scores
    assert early[2] == 1 and 2 <= early[1] <= 4
    index.remove_worker(2)
    assert index.find_matches([A, B, C, D], early_exit=True).scores == {1: 1}


def test_block_held_under_two_engine_hashes_survives_one_removal() -> None:
    index = KvIndexer()
    first = KvEvent(1, KvStored([StoredBlock(100, A)]))
    second = KvEvent(2, KvStored([StoredBlock(200, A)]))  # same tokens, engine mixed in a salt
    index.apply(batch(1, first, second))
    index.apply(batch(1, KvEvent(3, KvRemoved([100]))))
    assert index.find_matches([A]).scores == {1: 1}
    index.apply(batch(1, KvEvent(4, KvRemoved([200]))))
    assert index.find_matches([A]).scores == {}


def test_engine_hash_reused_for_other_content_moves_the_block() -> None:
    index = KvIndexer()
    index.apply(batch(1, KvEvent(1, KvStored([StoredBlock(100, A)]))))
    index.apply(batch(1, KvEvent(2, KvStored([StoredBlock(100, B)]))))
    assert index.find_matches([A]).scores == {}
    assert index.find_matches([B]).scores == {1: 1}
    assert index.num_nodes == 1


def test_matches_a_brute_force_model_under_random_events() -> None:
    rng = random.Random(7)
    alphabet = [A, B, C, D]
    index = KvIndexer()
    held: dict[int, dict[int, tuple[int, ...]]] = {w: {} for w in range(5)}  # engine hash -> path
    next_id = dict.fromkeys(held, 1)

    def emit(worker: int, event: KvEvent) -> None:
        index.apply(batch(worker, event))
        next_id[worker] += 1

    for _ in range(3000):
        worker = rng.randrange(5)
        eid = next_id[worker]
        roll = rng.random()
        if roll < 0.55:
            paths = list(held[worker].values())
            if paths and rng.random() < 0.7:
                base = list(rng.choice(paths))
            else:
                base = []
            extra = [rng.choice(alphabet) for _ in range(rng.randint(1, 3))]
            path = base + extra
            emit(worker, stored(eid, worker, path, start=len(base)))
            for i in range(len(base), len(path)):
                held[worker][engine_hash(worker, path[: i + 1])] = tuple(path[: i + 1])
        elif roll < 0.95:
            if held[worker]:
                victims = rng.sample(sorted(held[worker]), k=min(2, len(held[worker])))
                emit(worker, KvEvent(eid, KvRemoved(victims)))
                for victim in victims:
                    del held[worker][victim]
        else:
            emit(worker, KvEvent(eid, KvCleared()))
            held[worker].clear()

        if rng.random() < 0.2:
            prompt = [rng.choice(alphabet) for _ in range(rng.randint(1, 6))]
            expected = {}
            for w, blocks in held.items():
                held_paths = set(blocks.values())
                depth = 0
                while depth < len(prompt) and tuple(prompt[: depth + 1]) in held_paths:
                    depth += 1
                if depth:
                    expected[w] = depth
            assert index.find_matches(prompt).scores == expected

    assert not index.pending_resyncs()
    assert index.stats.unknown_parents == 0


def test_a_load_report_past_the_last_applied_event_asks_for_the_tail() -> None:
    """Events lost at the end, with none after them, show only in the worker's load report."""
    requests: list[ResyncRequest] = []
    index = KvIndexer(on_resync_needed=requests.append)
    index.apply(batch(1, stored(1, 1, [A]), stored(2, 1, [A, B], start=1)))
    index.note_sent(1, 2)  # up to date
    index.note_sent(7, 4)  # a worker never heard from: everything it kept
    assert requests == [ResyncRequest(7, -1, "lost at the tail")]
    index.note_sent(1, 4)  # 3 and 4 lost
    assert requests[-1] == ResyncRequest(1, 2, "lost at the tail")
    assert not index.needs_resync(1)  # asked again by the next report, not by the sweep
    index.apply(batch(1, stored(3, 1, [A, B, C], start=2), stored(4, 1, [D])))
    index.note_sent(1, 4)
    assert len(requests) == 2
    assert index.find_matches([A, B, C]).scores == {1: 3}


def test_a_load_report_does_not_ask_while_a_resync_is_pending() -> None:
    requests: list[ResyncRequest] = []
    index = KvIndexer(on_resync_needed=requests.append)
    index.apply(batch(1, stored(1, 1, [A]), stored(5, 1, [D])))  # 2-4 lost: a replay is pending
    index.note_sent(1, 5)
    assert requests == [ResyncRequest(1, 1, "event id jumped from 1 to 5")]
