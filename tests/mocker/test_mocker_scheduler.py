"""Scheduler: token budget, chunked prefill, batch size, prefix-aware prefill and preemption.

Driven synchronously (schedule -> complete), without the engine's clock.
"""

from dynamo.llm.protocols import FINISH_LENGTH
from dynamo.mocker.config import MockerConfig
from dynamo.mocker.event_log import KvEventLog
from dynamo.mocker.kv_manager import KvManager
from dynamo.mocker.scheduler import Scheduler, Step
from dynamo.mocker.sequence import FINISHED, RUNNING, WAITING, Sequence, TokenSampler
from dynamo.router.prefix_hashes import PrefixHasher


def make(**kw) -> Scheduler:
    cfg = MockerConfig(**{"num_gpu_blocks": 1000, "block_size": 16, "watermark": 0.0, **kw})
    kv = KvManager(cfg.num_gpu_blocks, cfg.block_size, KvEventLog(0, None), cfg.watermark)
    return Scheduler(cfg, kv)


def seq(sched: Scheduler, rid: str, prompt_len: int, max_new: int, base: int = 0) -> Sequence:
    prompt = [base + i for i in range(prompt_len)]
    sampler = TokenSampler(hash(rid), 5000, frozenset(), prompt)
    s = Sequence(
        rid,
        prompt,
        sched.block_size,
        max_new,
        sampler,
        hasher=PrefixHasher(sched.block_size, keep_local=True),
    )
    sched.add(s)
    return s


def run(sched: Scheduler, max_steps: int = 100_000) -> list[Step]:
    steps = []
    while sched.has_work():
        step = sched.schedule(0.0)
        sched.complete(step)
        steps.append(step)
        assert len(steps) < max_steps, "scheduler made no progress"
    return steps


def step_tokens(step: Step) -> int:
    decode = sum(1 for s in step.emit if all(s is not p for p, _ in step.prefill))
    return step.prefill_tokens + decode


def test_chunked_prefill_respects_token_budget() -> None:
    sched = make(max_num_batched_tokens=256)
    s = seq(sched, "a", 1000, 3)
    steps = run(sched)
    assert [st.prefill_tokens for st in steps[:4]] == [256, 256, 256, 232]
    assert [len(st.emit) for st in steps[:4]] == [0, 0, 0, 1]  # first token when the prefill completes
    assert s.state == FINISHED and s.generated == 3 and s.finish == FINISH_LENGTH
    assert len(s.out) == 3


def test_budget_shared_between_decodes_and_prefills() -> None:
    sched = make(max_num_batched_tokens=64)
    decoders = [seq(sched, f"d{i}", 10, 50, base=100 * i) for i in range(3)]
    for _ in range(2):
        sched.complete(sched.schedule(0.0))
    assert all(d.generated >= 1 for d in decoders)
    seq(sched, "long", 500, 1, base=10_000)
    steps = run(sched)
    assert max(step_tokens(st) for st in steps) <= 64
    assert sched.stats.max_batch_tokens <= 64
    # while the long prompt is chunked, the three decoders still get their token every step
    mixed = [st for st in steps if st.prefill_tokens and len(st.emit) >= 3]
    assert mixed and all(st.prefill_tokens == 61 for st in mixed[:-1])


def test_without_chunking_a_prompt_waits_for_a_step_with_room() -> None:
    sched = make(max_num_batched_tokens=256, enable_chunked_prefill=False)
    a = seq(sched, "a", 200, 2)
    b = seq(sched, "b", 200, 2, base=1000)
    first = sched.schedule(0.0)
    assert [p for p, _ in first.prefill] == [a] and b.state == WAITING
    sched.complete(first)
    second = sched.schedule(0.0)
    assert [p for p, _ in second.prefill] == [b] and second.prefill_tokens == 200
    run(sched)
    assert a.generated == b.generated == 2


def test_max_num_seqs_limits_the_batch() -> None:
    sched = make(max_num_seqs=2)
    seqs = [seq(sched, f"s{i}", 20, 5, base=100 * i) for i in range(5)]
    first = sched.schedule(0.0)
    assert len(sched.running) == 2 and sum(s.state == WAITING for s in seqs) == 3
    sched.complete(first)
    run(sched)
    assert sched.stats.max_running == 2
    assert all(s.generated == 5 for s in seqs)


def test_prefix_cache_hit_skips_cached_tokens() -> None:
    sched = make()
    a = seq(sched, "a", 100, 1)
    run(sched)
    b = seq(sched, "b", 100, 1)  # same prompt
    step = sched.schedule(0.0)
    assert a.cached_tokens == 0
    assert b.cached_tokens == 96  # 6 full blocks of 16; the partial block is recomputed
    assert step.prefill_tokens == 4
    assert sched.prefix_hit_rate == (0 + 0.96) / 2


def test_no_prefix_caching_recomputes_everything() -> None:
    sched = make(enable_prefix_caching=False)
    seq(sched, "a", 100, 1)
    run(sched)
    b = seq(sched, "b", 100, 1)
    assert sched.schedule(0.0).prefill_tokens == 100 and b.cached_tokens == 0
    assert sched.kv.num_inactive == 0


def test_preemption_under_memory_pressure_completes_everything() -> None:
    # 40 blocks of 16 tokens; 6 sequences that each grow to 8 blocks cannot all fit at once
    sched = make(num_gpu_blocks=40, max_num_seqs=16)
    seqs = [seq(sched, f"s{i}", 40, 88, base=1000 * i) for i in range(6)]
    run(sched)
    assert sched.stats.preemptions > 0
    for s in seqs:
        assert s.state == FINISHED and s.finish == FINISH_LENGTH
        assert s.generated == 88 and len(s.out) == 88  # every token exactly once despite recompute
    assert sched.kv.num_active == 0


def test_lone_sequence_out_of_memory_finishes_instead_of_looping() -> None:
    sched = make(num_gpu_blocks=4)
    s = seq(sched, "a", 30, 1000)
    run(sched)
    assert s.state == FINISHED and s.finish == FINISH_LENGTH
    assert s.num_tokens == 4 * 16  # grew until the cache was full
    assert sched.kv.num_active == 0


def test_abort_frees_blocks() -> None:
    sched = make()
    s = seq(sched, "a", 100, 50)
    for _ in range(3):
        sched.complete(sched.schedule(0.0))
    assert s.state == RUNNING and sched.kv.num_active > 0
    sched.abort(s)
    assert s.state == FINISHED and sched.kv.num_active == 0 and not sched.has_work()
    assert sched.stats.aborted == 1
