"""ApproxKvIndexer (--no-kv-events): routed prefixes cached for a TTL, bounded in size."""

from dynamo.llm.kv_events import compute_sequence_hashes
from dynamo.router.approx import ApproxKvIndexer

A, B, C, D = 0xA1, 0xB2, 0xC3, 0xD4


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def seq(*local: int) -> list[int]:
    return compute_sequence_hashes(list(local))


def test_routed_prefix_matches_until_the_ttl_passes() -> None:
    clock = Clock()
    index = ApproxKvIndexer(ttl_s=120.0, clock=clock)
    assert index.find_matches([A, B]).scores == {}
    index.record_routed(1, seq(A, B, C))
    assert index.find_matches([A, B, D]).scores == {1: 2}
    assert index.find_matches_sequence(seq(A, B, C)).scores == {1: 3}
    clock.now += 119.9
    assert index.find_matches([A, B, C]).scores == {1: 3}
    clock.now += 0.2
    assert index.find_matches([A, B, C]).scores == {}
    assert len(index) == 0 and index.tree_size(1) == 0


def test_routing_again_refreshes_the_ttl() -> None:
    clock = Clock()
    index = ApproxKvIndexer(ttl_s=10.0, clock=clock)
    index.record_routed(1, seq(A, B, C))
    clock.now += 8
    index.record_routed(1, seq(A, B))  # the shared prefix is refreshed, C is not
    clock.now += 5
    assert index.find_matches([A, B, C]).scores == {1: 2}
    clock.now += 6
    assert index.find_matches([A, B, C]).scores == {}


def test_workers_are_tracked_separately() -> None:
    index = ApproxKvIndexer(clock=Clock())
    index.record_routed(1, seq(A, B))
    index.record_routed(2, seq(A, C))
    assert index.find_matches([A, B]).scores == {1: 2, 2: 1}
    index.remove_worker(1)
    assert index.find_matches([A, B]).scores == {2: 1}


def test_size_bound_prunes_oldest_entries_tail_first() -> None:
    clock = Clock()
    index = ApproxKvIndexer(ttl_s=100.0, max_blocks=4, prune_target_ratio=0.5, clock=clock)
    index.record_routed(1, seq(A, B, C))
    clock.now += 1
    index.record_routed(2, seq(D, C))  # 5 entries > 4: prune down to 2, oldest first
    assert len(index) == 2
    assert index.find_matches([D, C]).scores == {2: 2}
    assert index.find_matches([A, B, C]).scores == {}
    clock.now += 1
    index.record_routed(1, seq(A, B, C))  # 5 again: worker 2's two go, then C of worker 1
    assert index.find_matches([A, B, C]).scores == {1: 2}
    assert index.find_matches([D]).scores == {}


def test_expire_reports_what_went() -> None:
    clock = Clock()
    index = ApproxKvIndexer(ttl_s=1.0, clock=clock)
    index.record_routed(3, seq(A, B))
    clock.now += 2
    assert index.expire() == 2
    assert index.expire() == 0
