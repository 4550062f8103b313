"""Routing policies and the instance router behind ``--router-mode``: which instance each picks, and
how a kv policy's predicted load follows the request's life (first token, completion)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from dynamo.frontend.args import ROUTER_MODES
from dynamo.frontend.routing import (
    POLICIES,
    AllWorkersBusy,
    InstanceRouter,
    KvPolicy,
    NoWorkers,
    RandomPolicy,
    RoundRobinPolicy,
    create_policy,
)
from dynamo.router import KvRouterConfig

PROMPT = list(range(100, 164))  # 4 blocks of 16


def test_every_router_mode_has_a_policy_and_nothing_else_does():
    assert set(POLICIES) == set(ROUTER_MODES)
    for mode in ROUTER_MODES:
        assert create_policy(mode).name == mode
    with pytest.raises(ValueError, match="unknown router mode 'nearest'"):
        create_policy("nearest")


def test_round_robin_cycles_through_the_live_instances():
    router = InstanceRouter(RoundRobinPolicy())
    for iid in (30, 10, 20):
        router.add(iid)
    picks = [router.select(PROMPT, f"r{i}").instance_id for i in range(6)]
    assert sorted(picks[:3]) == [10, 20, 30] and picks[3:] == picks[:3]


def test_random_spreads_over_the_candidates_only():
    router = InstanceRouter(RandomPolicy(random.Random(7)))
    for iid in (1, 2, 3):
        router.add(iid)
    seen = Counter(router.select(PROMPT, f"r{i}", exclude={3}).instance_id for i in range(200))
    assert set(seen) == {1, 2} and min(seen.values()) > 60


def test_unreachable_instances_cool_down_and_pinned_requests_go_where_pinned():
    router = InstanceRouter(RoundRobinPolicy())
    for iid in (1, 2):
        router.add(iid)
    router.mark_unreachable(1)
    assert {router.select(PROMPT, f"r{i}").instance_id for i in range(4)} == {2}
    router.mark_unreachable(2)  # every one cooling: better a cooling one than none
    assert router.select(PROMPT, "r").instance_id in (1, 2)
    assert router.select(PROMPT, "p", pinned=1).instance_id == 1
    with pytest.raises(NoWorkers):
        router.select(PROMPT, "p", pinned=99)
    router.remove(1)
    router.remove(2)
    with pytest.raises(NoWorkers):
        router.select(PROMPT, "r")


def test_kv_policy_accounts_prefill_until_the_first_token_and_blocks_until_completion():
    router = InstanceRouter(KvPolicy(KvRouterConfig(block_size=16)))
    assert router.kv is not None
    router.add(1, 1000)
    router.add(2, 1000)
    seqs = router.kv.sequences
    first = router.select(PROMPT, "a").instance_id
    assert seqs.prefill_tokens(first) == 64 and seqs.active_blocks(first) == 4
    # the second request goes to the other worker: the first one's load is predicted
    second = router.select([t + 1000 for t in PROMPT], "b").instance_id
    assert second != first
    router.on_first_token("a")
    assert seqs.prefill_tokens(first) == 0 and seqs.active_blocks(first) == 4
    router.on_finished("a")
    router.on_finished("b")
    assert [seqs.active_requests(w) + seqs.active_blocks(w) for w in (1, 2)] == [0, 0]


def test_kv_policy_refuses_when_every_worker_is_busy():
    router = InstanceRouter(
        create_policy("kv", kv_config=KvRouterConfig(block_size=16, active_prefill_tokens_threshold=10))
    )
    router.add(1)
    router.select(PROMPT, "a")
    with pytest.raises(AllWorkersBusy):
        router.select(PROMPT, "b")
    assert router.kv is not None and len(router.kv.sequences) == 1


def test_stateless_policies_have_no_kv_router():
    assert InstanceRouter(create_policy("round-robin")).kv is None
    assert InstanceRouter(create_policy("random")).kv is None
