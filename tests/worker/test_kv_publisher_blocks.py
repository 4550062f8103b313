"""The KV event relay's cached-block set (``CachedBlocks``), applied a run at a time, and an
engine-provided block source replacing it (``KvEventPublisher.use_block_source``)."""

from __future__ import annotations

from dynamo.llm.kv_events import KvCleared, KvEvent, KvEventBatch, KvRemoved, KvStored, StoredBlock
from dynamo.runtime import EndpointId
from dynamo.worker.kv_publisher import CachedBlocks, KvEventPublisher


def stored(event_id: int, parent: int | None, *pairs: tuple[int, int]) -> KvEvent:
    return KvEvent(event_id, KvStored(blocks=[StoredBlock(h, t) for h, t in pairs], parent_hash=parent))


def test_a_stored_run_chains_each_block_to_the_one_before_it():
    cached = CachedBlocks()
    cached.apply(stored(0, None, (1, 11), (2, 12), (3, 13)))
    cached.apply(stored(1, 2, (4, 14), (5, 15)))  # a branch after block 2
    cached.apply(stored(2, 3, (6, 16)))
    assert cached.blocks == {1: (None, 11), 2: (1, 12), 3: (2, 13), 4: (2, 14), 5: (4, 15), 6: (3, 16)}
    cached.apply(KvEvent(3, KvRemoved(block_hashes=[5, 3, 99])))  # 99 was never stored
    assert cached.blocks == {1: (None, 11), 2: (1, 12), 4: (2, 14), 6: (3, 16)}
    cached.apply(stored(4, None, (3, 23)))  # stored again, now from the root
    assert cached.blocks[3] == (None, 23) and cached.last_event_id == 4
    cached.apply(KvEvent(5, KvCleared()))
    assert cached.blocks == {} and cached.last_event_id == 5


def test_with_an_engine_block_source_the_relay_keeps_no_copy():
    publisher = KvEventPublisher(None, EndpointId("test", "worker", "generate"))  # type: ignore[arg-type]
    batch = KvEventBatch(worker_id=9, events=[stored(0, None, (1, 11), (2, 12))])
    publisher.sink(batch)
    assert publisher.snapshot(9).events[1].data == batch.events[0].data  # from its own copy
    answer = KvEventBatch(worker_id=9, events=[KvEvent(0, KvCleared())])
    asked: list[tuple[int, int]] = []

    def source(worker_id: int, dp_rank: int) -> KvEventBatch:
        asked.append((worker_id, dp_rank))
        return answer

    publisher.use_block_source(source)
    assert publisher.cached == {}
    publisher.sink(KvEventBatch(worker_id=9, events=[stored(1, 2, (3, 13))]))
    assert publisher.cached == {}  # not rebuilt from events any more
    assert publisher.snapshot(9, 2) is answer and asked == [(9, 2)]
    assert [e.event_id for e in publisher.replay(-1) or []] == [0, 1]  # the history is still kept


def test_replay_is_per_rank_and_refuses_a_history_with_a_hole():
    """A rank's events replay by themselves; a hole (batches the relay itself missed) or a history
    that no longer reaches back is None: the router then takes a snapshot."""
    publisher = KvEventPublisher(None, EndpointId("test", "worker", "generate"))  # type: ignore[arg-type]
    publisher.sink(KvEventBatch(worker_id=9, events=[stored(0, None, (1, 11)), stored(1, 1, (2, 12))]))
    publisher.sink(KvEventBatch(worker_id=9, events=[stored(0, None, (7, 17))], dp_rank=1))
    assert [e.event_id for e in publisher.replay(0) or []] == [1]
    assert [e.data for e in publisher.replay(-1, dp_rank=1) or []] == [stored(0, None, (7, 17)).data]
    assert publisher.replay(1) == []  # nothing after the last
    publisher.sink(KvEventBatch(worker_id=9, events=[stored(5, 2, (3, 13))]))  # 2-4 never reached it
    assert publisher.replay(1) is None
    assert [e.event_id for e in publisher.replay(4) or []] == [5]
