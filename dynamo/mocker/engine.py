"""``MockEngine``: a simulated vLLM-like engine that streams token ids on a modelled schedule.

Journey: request plane -> worker handler -> ``MockEngine.generate(PreprocessedRequest)`` ->
``Scheduler`` (continuous batching over a simulated KV cache) -> ``EngineOutput`` chunks back.
KV cache changes go to the ``kv_event_sink`` as ``KvEventBatch``es, load via ``load_metrics()``.

One background task runs the batch: per step it schedules, sleeps the modelled prefill time,
appends one token to every emitting sequence and wakes their consumers, then sleeps the modelled
decode time. Sleeps follow a running deadline, so coarse timers and bookkeeping do not slow the
simulation down on average (bounded catch-up). A consumer that falls behind receives the tokens of
several steps in one chunk.
"""

from __future__ import annotations

import asyncio
import logging
import math
import zlib
from collections.abc import AsyncGenerator, Iterable

from dynamo.llm.kv_events import KvEvent, LoadMetrics
from dynamo.llm.protocols import FINISH_ERROR, EngineOutput, PreprocessedRequest, TokenLogprob
from dynamo.mocker.config import MockerConfig
from dynamo.mocker.disagg import accept_transfer, is_prefill_request, make_transfer_params
from dynamo.mocker.event_log import KvEventLog, KvEventSink
from dynamo.mocker.kv_manager import KvBlockSnapshot, KvManager
from dynamo.mocker.scheduler import Scheduler, SchedulerStats
from dynamo.mocker.sequence import FINISHED, Sequence, TokenSampler
from dynamo.mocker.timing import decode_ms, prefill_ms
from dynamo.router.prefix_hashes import PrefixHasher

_UNIFORM_VOCAB = 32000  # logprobs of a mocker that draws from the prompt's ids (no vocabulary size)

logger = logging.getLogger(__name__)

# Most wall time (s) the simulation may run behind its modelled schedule before the debt is
# forgiven (an overloaded CPU then slows the simulation instead of bursting forever).
MAX_LAG_S = 0.005


class MockEngine:
    """A simulated engine for one worker (and data-parallel rank)."""

    def __init__(
        self,
        config: MockerConfig,
        worker_id: int,
        vocab_size: int | None = None,
        eos_token_id: int | None = None,
        kv_event_sink: KvEventSink | None = None,
        dp_rank: int = 0,
        special_token_ids: Iterable[int] | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.worker_id = worker_id
        self.dp_rank = dp_rank
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        special = set(special_token_ids or ())
        if eos_token_id is not None:
            special.add(eos_token_id)
        self._special = frozenset(special)
        self._events = KvEventLog(worker_id, kv_event_sink, dp_rank)
        self.kv = KvManager(config.num_gpu_blocks, config.block_size, self._events, config.watermark)
        # Prompts sharing a prefix (a system prompt) share its block hashes: hashed once.
        self._hasher = PrefixHasher(config.block_size, keep_local=True)
        self.scheduler = Scheduler(config, self.kv)
        self.sim_time_ms = 0.0  # modelled busy time (prefill + decode), before speedup
        self._context_limit = config.context_limit
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    # ----- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background batch loop."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._error = None
        self._task = self._loop.create_task(self._run(), name=f"mocker-engine-{self.worker_id:x}")
        c = self.config
        logger.info(
            "mocker engine %x (dp %d, %s) started: %d KV blocks x %d tokens, max %d seqs, %d batched "
            "tokens, prefix caching %s, chunked prefill %s, speedup %g (decode x%g)",
            self.worker_id,
            self.dp_rank,
            c.worker_mode,
            c.num_gpu_blocks,
            c.block_size,
            c.max_num_seqs,
            c.max_num_batched_tokens,
            c.enable_prefix_caching,
            c.enable_chunked_prefill,
            c.speedup_ratio,
            c.decode_speedup_ratio,
        )

    async def stop(self) -> None:
        """Stop the loop; requests still in flight end with an error."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        self._fail_all("engine stopped")
        logger.info("mocker engine %x stopped", self.worker_id)

    @property
    def running(self) -> bool:
        """Whether the loop runs and has not failed."""
        return self._task is not None and self._error is None

    @property
    def stats(self) -> SchedulerStats:
        return self.scheduler.stats

    # ----- requests -----------------------------------------------------------------------------

    async def generate(self, req: PreprocessedRequest) -> AsyncGenerator[EngineOutput, None]:
        """Run one request; yields ``EngineOutput`` chunks (the first carries ``prompt_tokens`` and
        ``cached_tokens``, the last ``finish_reason``). Closing the generator or cancelling its
        consumer aborts the request and frees its KV blocks at once."""
        if self._task is None or self._loop is None:
            raise RuntimeError("mocker engine is not started")
        if self._error is not None:
            raise RuntimeError(f"mocker engine failed: {self._error}")
        seq = self._make_sequence(req)
        if isinstance(seq, str):
            logger.warning("request %s rejected: %s", req.request_id, seq)
            yield EngineOutput(finish_reason=FINISH_ERROR, error=seq, prompt_tokens=len(req.token_ids))
            return
        self.scheduler.add(seq)
        self._kick()
        loop = self._loop
        first = True
        want_logprobs = req.output.logprobs
        try:
            while True:
                if not seq.out and seq.finish is None:
                    fut = loop.create_future()
                    seq.waiter = fut
                    await fut
                    seq.waiter = None
                tokens = seq.out
                if tokens:
                    seq.out = []
                finish = seq.finish
                logprobs = (
                    self._logprobs(tokens, want_logprobs) if want_logprobs is not None and tokens else None
                )
                if finish is None and not first:
                    yield EngineOutput(token_ids=tokens, logprobs=logprobs)
                    continue
                out = EngineOutput(token_ids=tokens, finish_reason=finish, logprobs=logprobs)
                if first:
                    first = False
                    out.prompt_tokens = seq.prompt_len
                    out.cached_tokens = seq.cached_tokens or 0
                if finish is not None:
                    if finish == FINISH_ERROR:
                        out.error = seq.error
                    elif seq.prefill_only:
                        out.kv_transfer_params = make_transfer_params(
                            self.worker_id, self.dp_rank, self.config.block_size, seq
                        )
                yield out
                if finish is not None:
                    return
        finally:
            if seq.state != FINISHED:
                self.scheduler.abort(seq)
                self._events.flush()
                self._kick()

    def _logprobs(self, tokens: list[int], top: int) -> list[TokenLogprob]:
        """What a uniform sampler's logprobs are: every id equally likely (``-ln vocab``); the
        alternatives are the next ids."""
        size = self.vocab_size or _UNIFORM_VOCAB
        lp = -math.log(size)
        return [TokenLogprob(t, lp, [((t + j) % size, lp) for j in range(top)]) for t in tokens]

    def _make_sequence(self, req: PreprocessedRequest) -> Sequence | str:
        """Build the engine state of a request, or return why it cannot run."""
        cfg = self.config
        prompt = req.token_ids
        n = len(prompt)
        if n == 0:
            return "empty prompt"
        limit = self._context_limit
        if n >= limit:
            return f"prompt of {n} tokens leaves no room for output (context limit {limit} tokens)"
        stop = req.stop
        params = req.kv_transfer_params
        prefill_only = cfg.is_prefill_worker or req.prefill_only or is_prefill_request(params)
        transfer_in = None
        if params is not None and not prefill_only:
            transfer_in = accept_transfer(req.request_id, params, n)
        room = limit - n
        if prefill_only:
            max_new = 1
        elif stop.max_tokens is not None:
            max_new = max(1, min(stop.max_tokens, room))
        else:
            max_new = room
        avoid = self._special
        extra = [*req.eos_token_ids, *stop.stop_token_ids]
        if extra:
            avoid = avoid | frozenset(extra)
        seed = req.sampling.seed
        if seed is None:
            seed = zlib.crc32(req.request_id.encode())
        sampler = TokenSampler(seed, self.vocab_size, avoid, prompt)
        eos_at = 0
        if not prefill_only and stop.max_tokens is None and not stop.ignore_eos:
            # No explicit limit: the "model" ends with EOS after a pseudo-random length.
            mean = cfg.mean_output_tokens
            eos_at = max(1 + sampler.draw() % (2 * mean - 1), stop.min_tokens, 1)
            if eos_at > max_new:
                eos_at = 0
        eos_token = req.eos_token_ids[0] if req.eos_token_ids else self.eos_token_id
        return Sequence(
            req.request_id,
            prompt,
            cfg.block_size,
            max_new,
            sampler,
            eos_at=eos_at,
            eos_token=eos_token,
            prefill_only=prefill_only,
            transfer_in=transfer_in,
            hasher=self._hasher,
        )

    # ----- state for the worker, the router and the planner --------------------------------------

    def load_metrics(self) -> LoadMetrics:
        """Current load report (pushed periodically by the worker)."""
        s = self.scheduler
        kv = self.kv
        active = kv.num_active
        return LoadMetrics(
            worker_id=self.worker_id,
            dp_rank=self.dp_rank,
            active_requests=len(s.running) + len(s.transferring),
            waiting_requests=len(s.waiting),
            max_requests=self.config.max_num_seqs,
            kv_active_blocks=active,
            kv_total_blocks=kv.num_blocks,
            cache_usage=active / kv.num_blocks,
            prefix_hit_rate=s.prefix_hit_rate,
        )

    def kv_block_set(self) -> KvBlockSnapshot:
        """Every block this engine caches, for a router resynchronising from scratch."""
        return self.kv.snapshot()

    def recent_events(self, since_event_id: int) -> list[KvEvent] | None:
        """KV events after ``since_event_id`` (None if they are no longer all kept: use
        ``kv_block_set`` instead)."""
        return self._events.since(since_event_id)

    def clear_kv_cache(self) -> None:
        """Drop all cached (inactive) blocks and tell the router (``cleared``)."""
        self.kv.clear()
        self._events.flush()

    # ----- the batch loop -----------------------------------------------------------------------

    def _kick(self) -> None:
        fut = self._wakeup
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _idle(self, loop: asyncio.AbstractEventLoop, wake_at: float | None) -> None:
        """Wait for a new request, an abort, or ``wake_at`` (a KV transfer completing)."""
        fut: asyncio.Future[None] = loop.create_future()
        self._wakeup = fut
        handle = loop.call_at(wake_at, _resolve, fut) if wake_at is not None else None
        try:
            await fut
        finally:
            self._wakeup = None
            if handle is not None:
                handle.cancel()

    async def _run(self) -> None:
        try:
            await self._batch_loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("mocker engine %x failed; failing all requests", self.worker_id)
            self._error = exc
            self._fail_all(f"mocker engine failed: {exc}")

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        sched = self.scheduler
        events = self._events
        cfg = self.config
        prefill_scale = 1.0 / (1000.0 * cfg.speedup_ratio)
        decode_scale = 1.0 / (1000.0 * cfg.speedup_ratio * cfg.decode_speedup_ratio)
        sleep = asyncio.sleep
        deadline = loop.time()
        while True:
            now = loop.time()
            step = sched.schedule(now)
            events.flush()
            for seq in step.finished:
                seq.wake()
            if step.is_empty:
                if not step.finished and not step.preempted:
                    await self._idle(loop, sched.next_ready_at())
                    deadline = loop.time()
                else:
                    await sleep(0)
                continue
            if deadline < now - MAX_LAG_S:
                deadline = now - MAX_LAG_S
            if step.prefill_tokens:
                ms = prefill_ms(step.prefill_tokens)
                self.sim_time_ms += ms
                deadline += ms * prefill_scale
                delay = deadline - loop.time()
                await sleep(delay if delay > 0 else 0)
            woken = sched.complete(step)
            events.flush()
            for seq in woken:
                w = seq.waiter
                if w is not None and not w.done():
                    w.set_result(None)
            if step.emit:
                ms = decode_ms(step.active_fraction)
                self.sim_time_ms += ms
                deadline += ms * decode_scale
                delay = deadline - loop.time()
                await sleep(delay if delay > 0 else 0)

    def _fail_all(self, message: str) -> None:
        for seq in self.scheduler.all_sequences():
            seq.finish = FINISH_ERROR
            seq.error = message
            self.scheduler.abort(seq)
            seq.wake()
        self._events.flush()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
