"""Continuous batching for the mocker: which sequences run in the next simulated forward pass.

Journey: engine stage. ``MockEngine`` hands new ``Sequence``s to ``Scheduler.add``; its loop calls
``schedule`` (build a ``Step``), sleeps the step's modelled time, then ``complete`` (advance the
sequences, emit tokens). Pure and synchronous: no asyncio, no clock of its own.

Policy (vLLM v1 / reference mocker): every step has a token budget (``max_num_batched_tokens``).
Decoding sequences take one token each first, then running chunked prefills, then waiting
sequences are admitted in arrival order while the batch has room (``max_num_seqs``), budget is
left and the KV admission check passes; the first that does not fit blocks the queue. Only
uncached prompt tokens cost prefill work. A sequence that needs a new block when the cache is full
preempts the most recently admitted running sequence (its blocks are released, it recomputes later).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from dynamo.llm.kv_events import compute_block_hashes, compute_sequence_hashes
from dynamo.llm.protocols import FINISH_CANCELLED, FINISH_LENGTH, FINISH_STOP
from dynamo.mocker.config import MockerConfig
from dynamo.mocker.kv_manager import KvManager
from dynamo.mocker.sequence import FINISHED, RUNNING, TRANSFERRING, WAITING, Sequence
from dynamo.mocker.timing import kv_transfer_ms

logger = logging.getLogger(__name__)

HIT_RATE_WINDOW = 1000


@dataclass(slots=True)
class Step:
    """One simulated forward pass: prefill chunks and the sequences that emit a token."""

    prefill: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, new tokens)
    emit: list[Sequence] = field(default_factory=list)
    prefill_tokens: int = 0  # uncached prompt tokens computed in this step (T)
    active_fraction: float = 0.0  # active KV blocks / total, after this step's allocations (p)
    finished: list[Sequence] = field(default_factory=list)  # ended while scheduling (no token)
    preempted: bool = False  # some sequence lost its blocks in this step

    @property
    def is_empty(self) -> bool:
        return not self.prefill and not self.emit


@dataclass(slots=True)
class SchedulerStats:
    """Counters for observability and tests."""

    steps: int = 0
    prefill_tokens: int = 0
    output_tokens: int = 0
    admitted: int = 0
    preemptions: int = 0
    finished: int = 0
    aborted: int = 0
    transfers: int = 0
    transfer_ms: float = 0.0  # simulated KV transfer time, summed
    max_batch_tokens: int = 0  # largest token count of one step (prefill + decode)
    max_running: int = 0


class Scheduler:
    """Waiting queue, running batch and KV accounting of one mocker engine."""

    def __init__(self, config: MockerConfig, kv: KvManager) -> None:
        self.config = config
        self.kv = kv
        self.block_size = config.block_size
        self.waiting: deque[Sequence] = deque()
        self.running: dict[Sequence, None] = {}  # insertion order = admission order
        self.transferring: list[Sequence] = []
        self.stats = SchedulerStats()
        self._hits: deque[float] = deque(maxlen=HIT_RATE_WINDOW)
        self._hit_sum = 0.0

    # ----- queue management ---------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence."""
        seq.state = WAITING
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> None:
        """Drop a sequence wherever it is (its consumer went away) and free its blocks now."""
        state = seq.state
        if state == FINISHED:
            return
        if state == WAITING:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        elif state == RUNNING:
            self.running.pop(seq, None)
            self._release(seq)
        elif state == TRANSFERRING:
            self.transferring.remove(seq)
            self._release(seq)
        seq.state = FINISHED
        if seq.finish is None:
            seq.finish = FINISH_CANCELLED
        self.stats.aborted += 1

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self.transferring)

    def next_ready_at(self) -> float | None:
        """When the earliest KV transfer completes (None if none is in flight)."""
        if not self.transferring:
            return None
        return min(s.ready_at for s in self.transferring)

    def all_sequences(self) -> list[Sequence]:
        return [*self.running, *self.transferring, *self.waiting]

    @property
    def prefix_hit_rate(self) -> float:
        """Mean fraction of prompt tokens found cached, over the last admissions."""
        return self._hit_sum / len(self._hits) if self._hits else 0.0

    # ----- one step -----------------------------------------------------------------------------

    def schedule(self, now: float) -> Step:
        """Build the next step; ``now`` (seconds, engine clock) only times KV transfers."""
        step = Step()
        cfg = self.config
        kv = self.kv
        running = self.running
        budget = cfg.max_num_batched_tokens

        if self.transferring:
            self._finish_transfers(now)

        # 1. Decoding sequences: one token each; grow into a new block when the last is full.
        preempted = False
        prefilling: list[Sequence] = []
        emit = step.emit
        for seq in list(running):
            if seq.state != RUNNING:
                continue  # preempted or finished earlier in this loop
            if seq.num_computed < seq.prefill_target:
                prefilling.append(seq)
                continue
            if budget <= 0:
                break
            if seq.num_tokens >= seq.kv_capacity and not self._grow(seq, step):
                preempted = True
                continue
            emit.append(seq)
            budget -= 1

        # 2. Running chunked prefills.
        for seq in prefilling:
            if budget <= 0:
                break
            if seq.state != RUNNING:
                preempted = True
                continue
            budget = self._prefill_chunk(seq, budget, step)

        # 3. Admission (not in a step that had to preempt: memory is tight).
        step.preempted = preempted
        if not preempted:
            budget = self._admit(now, budget, step)

        step.active_fraction = kv.num_active / kv.num_blocks
        batch_tokens = cfg.max_num_batched_tokens - budget
        stats = self.stats
        if not step.is_empty:
            stats.steps += 1
            stats.prefill_tokens += step.prefill_tokens
            if batch_tokens > stats.max_batch_tokens:
                stats.max_batch_tokens = batch_tokens
            if len(running) > stats.max_running:
                stats.max_running = len(running)
        return step

    def _prefill_chunk(self, seq: Sequence, budget: int, step: Step) -> int:
        remaining = seq.prefill_target - seq.num_computed
        n = remaining if remaining <= budget else budget
        step.prefill.append((seq, n))
        step.prefill_tokens += n
        if n == remaining:
            step.emit.append(seq)  # the pass that completes a prefill yields the first token
        return budget - n

    def _grow(self, seq: Sequence, step: Step) -> bool:
        """Give ``seq`` one more block, preempting the newest running sequences if needed.
        False when ``seq`` itself was preempted or had to stop."""
        kv = self.kv
        running = self.running
        while not kv.allocate_anonymous():
            victim = next(reversed(running))
            if victim is seq and len(running) == 1 and not self.transferring:
                # Alone and still out of memory: it can never grow; end it like a context limit.
                logger.warning(
                    "request %s: out of KV cache at %d tokens; finishing it", seq.request_id, seq.num_tokens
                )
                self._finish(seq, FINISH_LENGTH)
                step.finished.append(seq)
                return False
            self._preempt(victim)
            if victim is seq:
                return False
        seq.anonymous_blocks += 1
        seq.kv_capacity += self.block_size
        return True

    def _preempt(self, seq: Sequence) -> None:
        """Stop a running sequence, release its blocks and requeue it first; it recomputes its
        prompt and the tokens generated so far (cached blocks make that cheaper) when readmitted."""
        del self.running[seq]
        self._release(seq)
        seq.num_computed = 0
        seq.transfer_in = None  # the transferred KV is gone: recompute locally
        seq.state = WAITING
        self.waiting.appendleft(seq)
        self.stats.preemptions += 1
        logger.debug("request %s preempted at %d tokens", seq.request_id, seq.num_tokens)

    def _admit(self, now: float, budget: int, step: Step) -> int:
        cfg = self.config
        kv = self.kv
        bs = self.block_size
        caching = cfg.enable_prefix_caching
        waiting = self.waiting
        running = self.running
        while waiting and budget > 0 and len(running) + len(self.transferring) < cfg.max_num_seqs:
            seq = waiting[0]
            n = seq.num_tokens
            if caching:
                hashes = seq.seq_hashes
                matched = kv.cached_prefix(hashes)
                anonymous = 1  # the partial last block, or room for the next token
            else:
                hashes = []
                matched = 0
                anonymous = n // bs + 1
            total_blocks = len(hashes) + anonymous
            if total_blocks > kv.admission_limit:
                # Cannot fit even into an empty cache (should not happen within the context limit).
                waiting.popleft()
                logger.warning(
                    "request %s needs %d KV blocks, more than the cache admits; finishing it",
                    seq.request_id,
                    total_blocks,
                )
                self._finish(seq, FINISH_LENGTH)
                step.finished.append(seq)
                continue
            cached = min(matched * bs, n)
            remaining = n - cached
            transfer = seq.transfer_in is not None and seq.generated == 0
            if not transfer and not cfg.enable_chunked_prefill and remaining > budget:
                # Without chunking a prompt runs in one step; one larger than any step's budget
                # (possible after a preemption) is chunked anyway, from a step of its own.
                if remaining <= cfg.max_num_batched_tokens or budget < cfg.max_num_batched_tokens:
                    break
            if not kv.can_admit(kv.blocks_to_activate(hashes, anonymous)):
                break
            if not kv.acquire(hashes, seq.local_hashes, anonymous):  # pragma: no cover - admission guards it
                logger.error("request %s: block allocation failed after admission", seq.request_id)
                break
            waiting.popleft()
            seq.acquired_blocks = len(hashes)
            seq.anonymous_blocks = anonymous
            seq.kv_capacity = total_blocks * bs
            seq.prefill_target = n
            if seq.cached_tokens is None:
                seq.cached_tokens = cached
                self._record_hit(cached / n)
            self.stats.admitted += 1
            if transfer:
                # Decode worker: the prompt's KV arrives from the prefill worker instead of being
                # computed; only blocks not cached here are transferred.
                seq.num_computed = n
                ms = kv_transfer_ms(remaining, cfg.kv_bytes_per_token, cfg.kv_transfer_bandwidth)
                seq.transfer_ms = ms
                seq.ready_at = now + ms / 1000.0 / cfg.speedup_ratio
                seq.state = TRANSFERRING
                self.transferring.append(seq)
                self.stats.transfers += 1
                self.stats.transfer_ms += ms
                continue
            seq.num_computed = cached
            seq.state = RUNNING
            running[seq] = None
            if remaining == 0:
                step.emit.append(seq)  # everything cached: straight to its first token
                budget -= 1
            else:
                budget = self._prefill_chunk(seq, budget, step)
        return budget

    def _finish_transfers(self, now: float) -> None:
        still: list[Sequence] = []
        for seq in self.transferring:
            if seq.ready_at <= now:
                seq.state = RUNNING
                self.running[seq] = None
            else:
                still.append(seq)
        self.transferring = still

    def complete(self, step: Step) -> list[Sequence]:
        """Apply a step after its modelled time: advance prefills and append one token to every
        emitting sequence (finishing those that reached a stop condition). Returns the sequences
        whose consumers have something new to read."""
        for seq, n in step.prefill:
            if seq.state == RUNNING:
                seq.num_computed += n
        bs = self.block_size
        caching = self.config.enable_prefix_caching
        kv = self.kv
        woken: list[Sequence] = []
        produced = 0
        for seq in step.emit:
            if seq.state != RUNNING:
                continue  # aborted while the step was running
            g = seq.generated + 1
            finish: str | None = None
            if g == seq.eos_at:
                finish = FINISH_STOP
                tok = seq.eos_token
            else:
                tok = seq.sampler.next_token()
                if g >= seq.max_new_tokens:
                    finish = FINISH_LENGTH
            seq.generated = g
            if tok is not None:
                seq.out.append(tok)
                seq.num_tokens += 1
                seq.num_computed = seq.num_tokens - 1
                tail = seq.tail
                tail.append(tok)
                if len(tail) == bs:
                    self._fill_block(seq, caching, kv)
            produced += 1
            if finish is not None:
                self._finish(seq, finish)
            woken.append(seq)
        self.stats.output_tokens += produced
        return woken

    def _fill_block(self, seq: Sequence, caching: bool, kv: KvManager) -> None:
        """The sequence's last block filled up: hash it and make it a cacheable full block."""
        tail = seq.tail
        local = compute_block_hashes(tail, self.block_size)[0]
        hashes = seq.seq_hashes
        parent = hashes[-1] if hashes else None
        h = compute_sequence_hashes([parent, local])[1] if parent is not None else local
        seq.tail = []
        depth = len(hashes)
        hashes.append(h)
        seq.local_hashes.append(local)
        if caching:
            kv.promote(h, local, parent, depth)
            seq.anonymous_blocks -= 1

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.state == RUNNING:
            del self.running[seq]
            self._release(seq)
        seq.state = FINISHED
        seq.finish = reason
        self.stats.finished += 1

    def _release(self, seq: Sequence) -> None:
        if self.config.enable_prefix_caching:
            self.kv.release(seq.seq_hashes, seq.anonymous_blocks, seq.acquired_blocks)
        else:
            self.kv.release([], seq.anonymous_blocks)
        seq.anonymous_blocks = 0
        seq.kv_capacity = 0

    def _record_hit(self, rate: float) -> None:
        hits = self._hits
        if len(hits) == hits.maxlen:
            self._hit_sum -= hits[0]
        hits.append(rate)
        self._hit_sum += rate
