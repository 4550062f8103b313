"""Fakes of the ``tensorrt_llm`` classes the adapter uses; the real ones need a GPU.

They mimic TensorRT-LLM's LLM API shapes: ``LLM(model=..., **llm_args)`` (blocking constructor,
resolved options on ``llm.args``), ``llm.generate_async(prompt_token_ids, sampling_params=...,
streaming=..., disaggregated_params=...)`` returning a ``RequestOutput`` that is async-iterable,
whose ``outputs[0].token_ids`` are cumulative and whose ``abort()`` ends it with
``finish_reason="cancelled"``; ``SamplingParams`` and ``DisaggregatedParams`` as dataclasses that
reject unknown keywords; ``llm.get_kv_cache_events_async(timeout)`` yielding event dicts;
``llm.shutdown()``. A ``context_only`` request answers one token and ``DisaggregatedParams``
(``opaque_state`` bytes); a ``generation_only`` request checks them.

Decoding options: ``GuidedDecodingParams`` refuses two constraints at once, as the real one does;
a request with a constraint ends with a ``RequestError`` when the engine has no guided decoder
(``guided_decoding_backend`` unset) or the constraint does not compile (here: a JSON schema without
a known ``type``, a regex Python cannot compile, a grammar without ``root ::=``), and is otherwise
accepted (the fake cannot enforce it); an ``embedding_bias`` of 50 or more on a token forces it.
``llm.tokenizer`` exists unless ``skip_tokenizer_init``.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from dynamo.trtllm.engine import TrtllmBindings


@dataclass
class FakeSamplingParams:
    max_tokens: int | None = None
    min_tokens: int | None = None
    end_id: int | None = None
    pad_id: int | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logprobs: int | None = None
    detokenize: bool = True
    guided_decoding: FakeGuidedDecodingParams | None = None
    embedding_bias: Any = None  # a float32 tensor of the vocabulary's size


@dataclass(kw_only=True)
class FakeGuidedDecodingParams:
    json: Any = None
    regex: str | None = None
    grammar: str | None = None
    json_object: bool = False
    structural_tag: str | None = None

    def __post_init__(self) -> None:
        given = sum(
            bool(v) for v in (self.json, self.regex, self.grammar, self.json_object, self.structural_tag)
        )
        if given > 1:
            raise ValueError(f"Only one guide can be used for a request, but got {given}.")

    def compile_error(self) -> str | None:
        """What the guided decoder would say about this constraint (None: it compiles)."""
        if self.json is not None:
            schema = self.json
            if not isinstance(schema, dict) or schema.get("type") not in (
                None, "object", "array", "string", "integer", "number", "boolean", "null"
            ):  # fmt: skip
                return f"Invalid JSON schema: {schema!r}"
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                return f"Invalid regex: {exc}"
        if self.grammar is not None and "root ::=" not in self.grammar:
            return "Invalid EBNF grammar: no root rule"
        return None


@dataclass
class FakeDisaggregatedParams:
    request_type: str | None = None
    first_gen_tokens: list[int] | None = None
    ctx_request_id: int | None = None
    opaque_state: bytes | None = None
    draft_tokens: list[int] | None = None


class FakeRequestError(RuntimeError):
    """Stands in for ``tensorrt_llm.executor.utils.RequestError``."""


@dataclass
class Behaviour:
    """What the fake engine answers."""

    reply: list[int] = field(default_factory=lambda: [11, 12, 13, 14, 15])
    chunk: int = 2
    delay: float = 0.0
    reused_blocks: int | None = None  # perf metrics: KV blocks found in the prefix cache
    max_seq_len: int = 4096
    tokens_per_block: int = 32
    fail_start: Exception | None = None
    reject: Exception | None = None  # raised while iterating, like a RequestError
    opaque_state: bytes = b"\x00\x01prefill-state\xff"
    vocab_size: int = 49152  # what the tokenizer reports, when it is loaded


class FakeRequestOutput:
    """Async-iterable like TensorRT-LLM's ``RequestOutput``: the same object, updated each step."""

    def __init__(
        self, llm: FakeTrtllmLLM, prompt: list[int], params: FakeSamplingParams, streaming: bool, disagg: Any
    ) -> None:
        self.llm = llm
        self.prompt_token_ids = prompt
        self.params = params
        self.streaming = streaming
        self.disagg = disagg
        self.finished = False
        self.aborted = False
        self.outputs = [SimpleNamespace(token_ids=[], finish_reason=None, stop_reason=None, logprobs=None,
                                        disaggregated_params=None, request_perf_metrics=None)]  # fmt: skip
        # Like TensorRT-LLM, the engine produces into a queue the result reads from: a reader that
        # is cancelled leaves the request running.
        self._queue: asyncio.Queue[BaseException | None] = asyncio.Queue()
        self._end: BaseException | None = None
        self._producer = asyncio.get_running_loop().create_task(self._produce())

    async def _produce(self) -> None:
        try:
            async for _ in self._run():
                self._queue.put_nowait(None)
        except Exception as exc:
            self._queue.put_nowait(exc)
        self._queue.put_nowait(StopAsyncIteration())

    def abort(self) -> None:
        self.aborted = True
        self.llm.aborted.append(self)

    def __aiter__(self) -> FakeRequestOutput:
        return self

    async def __anext__(self) -> FakeRequestOutput:
        if self._end is not None:
            raise self._end
        item = await self._queue.get()
        if item is not None:
            self._end = item
            raise item
        return self

    async def _run(self):
        b = self.llm.behaviour
        out = self.outputs[0]
        if b.reject is not None:
            raise b.reject
        guided = self.params.guided_decoding
        if guided is not None:
            if not self.llm.llm_args.get("guided_decoding_backend"):
                raise FakeRequestError("Guided decoding is not enabled: set guided_decoding_backend")
            error = guided.compile_error()
            if error is not None:
                raise FakeRequestError(error)
        forced: int | None = None
        bias = self.params.embedding_bias
        if bias is not None and float(bias.max()) >= 50:
            forced = int(bias.argmax())
        request_type = getattr(self.disagg, "request_type", None)
        if request_type == "context_only":
            out.token_ids = [b.reply[0]]
            out.finish_reason = "length"
            out.disaggregated_params = FakeDisaggregatedParams(
                request_type="context_only", first_gen_tokens=[b.reply[0]], ctx_request_id=4242,
                opaque_state=b.opaque_state, draft_tokens=None,
            )  # fmt: skip
            self.finished = True
            self.llm.store_prompt(self.prompt_token_ids)
            yield self
            return
        if request_type == "generation_only":
            assert self.disagg.opaque_state == b.opaque_state and self.disagg.ctx_request_id == 4242
            await asyncio.sleep(0.05)  # the KV arrives from the prefill worker
        stops = set(self.params.stop_token_ids or [])
        if self.params.end_id is not None and not self.params.ignore_eos:
            stops.add(self.params.end_id)
        reply = [*b.reply, self.params.end_id if self.params.end_id is not None else 2]
        if forced is not None:
            reply = [forced] * len(b.reply)
        max_tokens = self.params.max_tokens or 16
        while True:
            await asyncio.sleep(b.delay)
            if self.aborted:
                out.finish_reason = "cancelled"
                self.finished = True
                yield self
                return
            for token in reply[len(out.token_ids) : len(out.token_ids) + b.chunk]:
                out.token_ids = [*out.token_ids, token]
                if token in stops:
                    out.finish_reason, out.stop_reason = (
                        "stop",
                        (None if token == self.params.end_id else token),
                    )
                    break
                if len(out.token_ids) >= max_tokens:
                    out.finish_reason = "length"
                    break
            if out.finish_reason is None and len(out.token_ids) >= len(reply):
                out.finish_reason = "length"
            if self.params.logprobs:
                out.logprobs = [-0.5] * len(out.token_ids)
            if out.finish_reason is not None:
                if b.reused_blocks is not None:
                    out.request_perf_metrics = SimpleNamespace(
                        kv_cache_metrics=SimpleNamespace(num_reused_blocks=b.reused_blocks)
                    )
                self.finished = True
                self.llm.store_prompt(self.prompt_token_ids)
            if self.streaming or self.finished:
                yield self
            if self.finished:
                return


class FakeTrtllmLLM:
    """Stands in for ``tensorrt_llm.LLM``; build with ``functools.partial(FakeTrtllmLLM, behaviour=...)``."""

    instances: list[FakeTrtllmLLM] = []

    def __init__(self, behaviour: Behaviour | None = None, *, model: str, **llm_args: Any) -> None:
        self.behaviour = b = behaviour or Behaviour()
        if b.fail_start is not None:
            raise b.fail_start
        time.sleep(0.01)  # the real constructor blocks for minutes: the adapter must call it off the loop
        self.model = model
        self.llm_args = llm_args
        kv = dict(llm_args.get("kv_cache_config") or {})
        self.args = SimpleNamespace(
            max_seq_len=llm_args.get("max_seq_len") or b.max_seq_len,
            max_batch_size=llm_args.get("max_batch_size") or 2048,
            max_num_tokens=llm_args.get("max_num_tokens") or 8192,
            kv_cache_config=SimpleNamespace(
                tokens_per_block=kv.get("tokens_per_block") or b.tokens_per_block
            ),
        )
        skip = llm_args.get("skip_tokenizer_init")
        self.tokenizer = None if skip else SimpleNamespace(tokenizer=SimpleNamespace(vocab_size=b.vocab_size))
        self.calls: list[FakeRequestOutput] = []
        self.aborted: list[FakeRequestOutput] = []
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._event_id = 0
        self._parent: int | None = None
        self.shut_down = False
        FakeTrtllmLLM.instances.append(self)

    def generate_async(
        self,
        inputs: list[int],
        sampling_params: FakeSamplingParams | None = None,
        streaming: bool = False,
        disaggregated_params: Any = None,
        **kwargs: Any,
    ) -> FakeRequestOutput:
        assert isinstance(inputs, list) and all(isinstance(t, int) for t in inputs)
        assert isinstance(sampling_params, FakeSamplingParams)
        result = FakeRequestOutput(self, inputs, sampling_params, streaming, disaggregated_params)
        self.calls.append(result)
        return result

    def store_prompt(self, prompt: list[int]) -> None:
        """Queue TensorRT-LLM-shaped KV events: ``stored`` for the prompt's blocks (the last one
        partial), then ``removed`` for the partial one; an ``updated`` event in between."""
        size = self.args.kv_cache_config.tokens_per_block
        blocks = []
        for start in range(0, len(prompt), size):
            tokens = prompt[start : start + size]
            blocks.append({"type": "stored_block", "block_hash": (start + 1) * 1000 + len(tokens),
                           "tokens": [{"type": "unique_token", "token_id": t, "token_extra_id": 0} for t in tokens],
                           "lora_id": None, "cache_level": 0, "priority": 35})  # fmt: skip
        self._emit({"type": "stored", "parent_hash": None, "blocks": blocks})
        self._emit(
            {"type": "updated", "block_hash": blocks[0]["block_hash"], "priority": {"old": 35, "new": 1}}
        )
        if len(blocks[-1]["tokens"]) < size:
            self._emit({"type": "removed", "block_hashes": [blocks[-1]["block_hash"]]})

    def _emit(self, data: dict[str, Any]) -> None:
        self.events.put_nowait({"event_id": self._event_id, "data": data, "window_size": 4096})
        self._event_id += 1

    async def get_kv_cache_events_async(self, timeout: float | None = None):
        """Events queued so far; ends after ``timeout`` seconds without one."""
        while True:
            try:
                event = await asyncio.wait_for(self.events.get(), timeout)
            except TimeoutError:
                return
            yield event

    def shutdown(self) -> None:
        self.shut_down = True


def fake_bindings(behaviour: Behaviour) -> TrtllmBindings:
    """The adapter's bindings with every TensorRT-LLM class replaced by its fake."""
    return TrtllmBindings(
        LLM=functools.partial(FakeTrtllmLLM, behaviour),
        SamplingParams=FakeSamplingParams,
        DisaggregatedParams=FakeDisaggregatedParams,
        RequestError=FakeRequestError,
        GuidedDecodingParams=FakeGuidedDecodingParams,
    )
