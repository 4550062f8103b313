"""A fake ``sglang.Engine``: the real one needs a GPU, so the adapter's tests drive this instead.

It mimics the parts of SGLang's API the adapter uses, with SGLang's shapes:
``Engine(**server_args)`` (blocking constructor), ``await engine.async_generate(input_ids=...,
sampling_params={...}, stream=True, rid=..., bootstrap_host/port/room=...)`` returning an async
generator of ``{"output_ids": [...], "meta_info": {"id", "prompt_tokens", "completion_tokens",
"cached_tokens", "finish_reason"}}`` (cumulative ``output_ids`` like older SGLang, or disjoint
segments with ``incremental_streaming_output``), ``engine.tokenizer_manager.abort_request(rid=...)``,
``auto_create_handle_loop()``, ``context_len``, ``server_args``, ``scheduler_info``,
``shutdown()``, and a ZMQ KV event publisher with SGLang's wire format when ``kv_events_config``
names one. Disaggregation: a prefill engine's request waits until the decode engine with the same
bootstrap room joins (``FakeBootstrapServer``), like SGLang's bootstrap handshake.

Decoding options, as SGLang treats them: a ``json_schema`` / ``regex`` / ``ebnf`` constraint is
aborted with status 400 when the engine has no grammar backend (``skip_tokenizer_init``) or the
constraint does not compile (here: JSON that is not a schema object with a known ``type``, a regex
Python cannot compile, an EBNF without ``root ::=``), and otherwise accepted (the fake cannot
enforce it: it has no tokenizer); ``logit_bias`` keys outside the vocabulary raise ``ValueError``
when the stream is read, a bias of 50 or more forces that token; ``return_logprob`` with
``logprob_start_len=0`` adds ``input_token_logprobs`` / ``input_top_logprobs`` to every chunk.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from http import HTTPStatus
from types import SimpleNamespace
from typing import Any

import msgspec
import zmq

from dynamo.sglang.engine import SglangBindings


@dataclass
class FakeBootstrapServer:
    """Rooms where a fake prefill request and its fake decode request meet."""

    rooms: dict[int, asyncio.Event] = field(default_factory=dict)
    joined: list[int] = field(default_factory=list)

    def room(self, room: int) -> asyncio.Event:
        return self.rooms.setdefault(room, asyncio.Event())


@dataclass
class Behaviour:
    """What the fake engine answers."""

    reply: list[int] = field(default_factory=lambda: [11, 12, 13, 14, 15])
    cumulative: bool = True  # older SGLang: each chunk repeats every output id so far
    chunk: int = 2  # new tokens per chunk
    delay: float = 0.0  # seconds per chunk
    eos: int = 2
    cached_tokens: int = 0
    context_len: int = 2048
    vocab_size: int = 49152
    max_total_num_tokens: int = 160_000
    max_running_requests: int = 48
    idle_ticks: int = 1  # empty chunks SGLang sends while scheduling
    raise_on_generate: Exception | None = None
    resolved_page_size: int | None = None  # ServerArgs.__post_init__ may change --page-size
    fail_start: Exception | None = None
    bootstrap: FakeBootstrapServer = field(default_factory=FakeBootstrapServer)


class FakeTokenizerManager:
    def __init__(self, server_args: SimpleNamespace, context_len: int) -> None:
        self.server_args = server_args
        self.context_len = context_len
        self.aborted: list[str] = []
        self.handle_loop_started = False
        self._abort_events: dict[str, asyncio.Event] = {}

    def auto_create_handle_loop(self) -> None:
        asyncio.get_running_loop()  # SGLang creates its loop task here: needs the running loop
        self.handle_loop_started = True

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        self.aborted.append(rid)
        event = self._abort_events.get(rid)
        if event is not None:
            event.set()

    def abort_event(self, rid: str) -> asyncio.Event:
        return self._abort_events.setdefault(rid, asyncio.Event())


class FakeSglangEngine:
    """Stands in for ``sglang.Engine``; build with ``functools.partial(FakeSglangEngine, behaviour=...)``."""

    instances: list[FakeSglangEngine] = []

    def __init__(self, behaviour: Behaviour | None = None, **server_args: Any) -> None:
        self.behaviour = behaviour or Behaviour()
        if self.behaviour.fail_start is not None:
            raise self.behaviour.fail_start
        if "model_path" not in server_args:
            raise TypeError("ServerArgs.__init__() missing 1 required positional argument: 'model_path'")
        time.sleep(0.01)  # the real constructor blocks for minutes: the adapter must call it off the loop
        self.server_args = SimpleNamespace(**server_args)
        if self.behaviour.resolved_page_size:
            self.server_args.page_size = self.behaviour.resolved_page_size
        self.tokenizer_manager = FakeTokenizerManager(self.server_args, self.behaviour.context_len)
        self.scheduler_info = {
            "max_total_num_tokens": self.behaviour.max_total_num_tokens,
            "max_running_requests": self.behaviour.max_running_requests,
        }
        self.calls: list[dict[str, Any]] = []
        self.shut_down = False
        self._pub: zmq.Socket[bytes] | None = None
        self._seq = 0
        config = server_args.get("kv_events_config")
        if config:
            cfg = json.loads(config)
            self._topic = str(cfg.get("topic", "")).encode()
            self._pub = zmq.Context.instance().socket(zmq.PUB)
            self._pub.bind(cfg["endpoint"])
        FakeSglangEngine.instances.append(self)

    @property
    def mode(self) -> str:
        return str(getattr(self.server_args, "disaggregation_mode", "null") or "null")

    def shutdown(self) -> None:
        self.shut_down = True
        if self._pub is not None:
            self._pub.close(linger=0)
            self._pub = None

    # ----- KV events, SGLang's wire format --------------------------------------------------------

    def publish(self, events: list[list[Any]]) -> None:
        if self._pub is None:
            return
        payload = msgspec.msgpack.encode([time.time(), events])
        self._pub.send_multipart([self._topic, self._seq.to_bytes(8, "big"), payload])
        self._seq += 1

    def _store_prompt(self, input_ids: list[int]) -> None:
        page = int(getattr(self.server_args, "page_size", 1) or 1)
        events: list[list[Any]] = []
        parent = None
        for start in range(0, len(input_ids) - page + 1, page):
            tokens = input_ids[start : start + page]
            block = hash(tuple(tokens))  # SGLang hashes with Python's hash(): may be negative
            events.append(["BlockStored", [block], parent, tokens, page, None])
            parent = block
        if events:
            self.publish(events)

    # ----- decoding options -------------------------------------------------------------------

    def _grammar_error(self, params: dict[str, Any]) -> str | None:
        """SGLang's abort message for a constraint it cannot use; None when there is none or it compiles."""
        given = {k: params[k] for k in ("json_schema", "regex", "ebnf") if params.get(k) is not None}
        if not given:
            return None
        if getattr(self.server_args, "skip_tokenizer_init", False):
            return (
                "Grammar-based generation (json_schema, regex, ebnf, structural_tag) is not supported "
                "when the server is launched with --grammar-backend none"
            )
        ((kind, spec),) = given.items()
        try:
            if kind == "json_schema":
                schema = json.loads(spec)
                if not isinstance(schema, dict) or schema.get("type") not in (
                    None, "object", "array", "string", "integer", "number", "boolean", "null"
                ):  # fmt: skip
                    raise ValueError(
                        f"Invalid type: {schema.get('type') if isinstance(schema, dict) else schema}"
                    )
            elif kind == "regex":
                re.compile(spec)
            elif "root ::=" not in spec:
                raise ValueError("no root rule")
        except (ValueError, re.error) as exc:
            return f"Failed to compile {kind.removesuffix('_schema')} grammar: {exc}"
        return None

    def _input_logprobs(self, prompt: list[int], top_n: int) -> dict[str, Any]:
        """SGLang's prompt logprobs: (logprob, token_id, text) per prompt token, the first None."""
        tokens = [(None, prompt[0], None)] + [
            (-0.05 - (i % 7) / 10, t, None) for i, t in enumerate(prompt) if i
        ]
        tops = [None] + [
            [(-0.01 - r / 2 - (i % 3) / 10, 7 + r, None) for r in range(top_n)] for i in range(1, len(prompt))
        ]
        return {"input_token_logprobs": tokens, "input_top_logprobs": tops}

    # ----- generation ---------------------------------------------------------------------------

    async def async_generate(self, **kwargs: Any) -> AsyncGenerator[dict[str, Any], None]:
        self.calls.append(kwargs)
        if self.behaviour.raise_on_generate is not None:
            raise self.behaviour.raise_on_generate
        assert kwargs.get("stream") is True, "the adapter must stream"
        assert isinstance(kwargs.get("input_ids"), list)
        return self._run(kwargs)

    async def _run(self, kwargs: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        b = self.behaviour
        rid = str(kwargs["rid"])
        prompt = list(kwargs["input_ids"])
        params = kwargs.get("sampling_params") or {}
        aborted = self.tokenizer_manager.abort_event(rid)
        meta: dict[str, Any] = {"id": rid, "prompt_tokens": len(prompt), "cached_tokens": b.cached_tokens}
        bias = {int(k): float(v) for k, v in (params.get("logit_bias") or {}).items()}
        outside = [t for t in bias if not 0 <= t < b.vocab_size]
        if outside:  # SamplingParams.verify, when the tokenizer manager takes the request
            raise ValueError(f"logit_bias must has keys in [0, {b.vocab_size - 1}], got {outside[0]}.")
        forced = [t for t, v in bias.items() if v >= 50]
        if kwargs.get("return_logprob") and kwargs.get("logprob_start_len") == 0:
            meta.update(self._input_logprobs(prompt, int(kwargs.get("top_logprobs_num") or 0)))

        def out(ids: list[int], produced: int, finish: dict[str, Any] | None) -> dict[str, Any]:
            return {
                "output_ids": ids,
                "meta_info": {**meta, "completion_tokens": produced, "finish_reason": finish},
            }

        if len(prompt) >= b.context_len:
            yield out(
                [],
                0,
                {
                    "type": "abort",
                    "message": f"The input ({len(prompt)} tokens) is longer than the model's context length ({b.context_len} tokens).",
                    "status_code": HTTPStatus.BAD_REQUEST,
                },
            )
            return
        grammar_error = self._grammar_error(params)
        if grammar_error is not None:
            yield out(
                [], 0, {"type": "abort", "message": grammar_error, "status_code": HTTPStatus.BAD_REQUEST}
            )
            return
        room = kwargs.get("bootstrap_room")
        if self.mode == "prefill":
            # SGLang's prefill waits for the decode side to join the room, then hands the KV over.
            await b.bootstrap.room(int(room)).wait()
            self._store_prompt(prompt)
            yield out([b.reply[0]], 1, {"type": "length", "length": 1})
            return
        if self.mode == "decode":
            assert room is not None and kwargs.get("bootstrap_host"), (
                "SGLang decode needs the bootstrap triple"
            )
            b.bootstrap.joined.append(int(room))
            b.bootstrap.room(int(room)).set()
        for _ in range(b.idle_ticks):
            yield out([], 0, None)
        max_new = int(params.get("max_new_tokens", 128))
        stops = set(params.get("stop_token_ids") or [])
        if not params.get("ignore_eos"):
            stops.add(b.eos)
        reply = [forced[0]] * len(b.reply) if forced else [*b.reply, b.eos]
        produced: list[int] = []
        finish: dict[str, Any] | None = None
        sent = 0
        while finish is None:
            if aborted.is_set():
                yield out([], len(produced), {"type": "abort", "message": "Abort before generation."})
                return
            for token in reply[len(produced) : len(produced) + b.chunk]:
                produced.append(token)
                if token in stops:
                    finish = {"type": "stop", "matched": token}
                    break
                if len(produced) >= max_new:
                    finish = {"type": "length", "length": max_new}
                    break
            if len(produced) >= len(reply) and finish is None:
                finish = {"type": "length", "length": len(produced)}
            if b.delay:
                await asyncio.sleep(b.delay)
            else:
                await asyncio.sleep(0)
            ids = list(produced) if b.cumulative else produced[sent:]
            sent = len(produced)
            if finish is not None:
                self._store_prompt(prompt)
            yield out(ids, len(produced), finish)


def fake_bindings(behaviour: Behaviour) -> SglangBindings:
    """The adapter's bindings with ``sglang.Engine`` replaced by the fake."""
    return SglangBindings(Engine=functools.partial(FakeSglangEngine, behaviour=behaviour))


@dataclass
class FakeServerArgs:
    """The shape of ``sglang.srt.server_args.ServerArgs`` the parser passes flags through (older
    SGLang's spelling: the parallelism flags land on ``tensor_parallel_size`` and friends)."""

    model_path: str
    served_model_name: str | None = None
    tp_size: int = 1
    dp_size: int = 1
    trust_remote_code: bool = False
    page_size: int | None = 1
    mem_fraction_static: float | None = None
    disaggregation_mode: str = "null"
    disaggregation_transfer_backend: str = "mooncake"
    disaggregation_bootstrap_port: int = 8998
    kv_events_config: str | None = None
    disable_radix_cache: bool = False
    enable_dp_attention: bool = False
    skip_tokenizer_init: bool = False
    grammar_backend: str | None = None
    stream_output: bool = False
    schedule_policy: str = "fcfs"

    @staticmethod
    def add_cli_args(parser: Any) -> None:
        parser.add_argument("--model-path", "--model", type=str, required=True)
        parser.add_argument("--served-model-name", type=str, default=None)
        parser.add_argument("--tensor-parallel-size", "--tp-size", type=int, default=1)
        parser.add_argument("--data-parallel-size", "--dp-size", type=int, default=1)
        parser.add_argument("--trust-remote-code", action="store_true")
        parser.add_argument("--page-size", type=int, default=1)
        parser.add_argument("--mem-fraction-static", type=float, default=None)
        parser.add_argument("--disaggregation-mode", choices=["null", "prefill", "decode"], default="null")
        parser.add_argument(
            "--disaggregation-transfer-backend", choices=["mooncake", "nixl"], default="mooncake"
        )
        parser.add_argument("--disaggregation-bootstrap-port", type=int, default=8998)
        parser.add_argument("--kv-events-config", type=str, default=None)
        parser.add_argument("--disable-radix-cache", action="store_true")
        parser.add_argument("--enable-dp-attention", action="store_true")
        parser.add_argument("--skip-tokenizer-init", action="store_true")
        parser.add_argument(
            "--grammar-backend", choices=["xgrammar", "outlines", "llguidance", "none"], default="xgrammar"
        )
        parser.add_argument("--stream-output", action="store_true")
        parser.add_argument("--schedule-policy", type=str, default="fcfs")
