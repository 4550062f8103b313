"""The stream and collect stages with several choices, on scripted output streams (the request
plane's async generators, timed by the test): events interleave as outputs arrive, a finished
choice stops being read, and a choice that fails fails the request and closes the others' streams.
An engine's refusal on the first output is an HTTP status even for a stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from dynamo.frontend.metrics import FrontendMetrics, RequestMetrics
from dynamo.frontend.responses import ResponseBuilder
from dynamo.frontend.sse import SSEResponse
from dynamo.frontend.stages.collect import collect
from dynamo.frontend.stages.route import Routed
from dynamo.frontend.stages.stream import stream_response
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.preprocessor import PreprocessedOutput, Preprocessor
from dynamo.llm.protocols import PreprocessedRequest

pytestmark = [pytest.mark.timeout(30)]
Batch = list[dict[str, Any]]


@pytest.fixture(scope="module")
def pp(smollm2_tokenizer_dir: Path) -> Preprocessor:
    card = ModelDeploymentCard.from_local_path(smollm2_tokenizer_dir, "smol")
    files = card.try_read_local_files()
    assert files is not None
    return Preprocessor.from_card(card, files)


class Script:
    """One choice's output stream: ``steps`` are batches, delays (seconds) or exceptions to raise;
    after them it waits forever, as an engine that has more to say. ``closed`` once the stage let go."""

    def __init__(self, *steps: Batch | float | BaseException) -> None:
        self.steps = steps
        self.closed = asyncio.Event()

    async def _gen(self) -> AsyncGenerator[Batch, None]:
        try:
            for step in self.steps:
                if isinstance(step, float | int):
                    await asyncio.sleep(step)
                elif isinstance(step, BaseException):
                    raise step
                else:
                    yield step
            await asyncio.Event().wait()
            yield []  # never reached
        finally:
            self.closed.set()

    async def routed(self) -> Routed:
        batches = self._gen()
        first = await batches.__anext__()
        return Routed(SimpleNamespace(instance_id=None), batches, first)  # type: ignore[arg-type]


def tok(pp: Preprocessor, text: str, finish: str | None = None) -> Batch:
    out: dict[str, Any] = {"token_ids": pp.tokenizer.encode(text, add_special_tokens=False).ids}
    if finish:
        out["finish_reason"] = finish
    return [out]


def builder(pp: Preprocessor, n: int, kind: str = "chat") -> ResponseBuilder:
    ids = pp.tokenizer.encode("Hello", add_special_tokens=False).ids
    pres = [
        PreprocessedOutput(PreprocessedRequest(f"r-{i}", "smol", ids), len(ids), index=i) for i in range(n)
    ]
    return ResponseBuilder(kind, "id-1", "smol", pres, pp, include_usage=True)


def record() -> RequestMetrics:
    metrics = FrontendMetrics(CollectorRegistry(), lambda: [])
    model = SimpleNamespace(inflight=0)
    rec = RequestMetrics(metrics.model("smol"), model, "chat_completions", True, 0.0, 1)  # type: ignore[arg-type]
    rec.first_output()
    return rec


async def body_of(response: Any) -> list[Any]:
    assert isinstance(response, SSEResponse)
    raw = b"".join([chunk async for chunk in response.events])
    out: list[Any] = []
    for line in raw.decode().split("\n"):
        if line.startswith("data: "):
            out.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
    return out


async def test_events_interleave_as_outputs_arrive_and_a_finished_choice_is_let_go(pp: Preprocessor) -> None:
    fast = Script(tok(pp, " a"), 0.01, tok(pp, " b", "stop"), tok(pp, " never read"))
    slow = Script(tok(pp, " x"), 0.05, tok(pp, " y"), 0.05, tok(pp, " z", "length"))
    routed = [await fast.routed(), await slow.routed()]
    b = builder(pp, 2)
    events = await body_of(await stream_response(routed, b, record(), {}))
    assert events[-1] == "[DONE]"
    order = [(e["choices"][0]["index"], e["choices"][0]["delta"].get("content")) for e in events[:-2]]
    assert order == [(0, " a"), (1, " x"), (0, " b"), (1, " y"), (1, " z")]
    assert fast.closed.is_set() and slow.closed.is_set()
    usage = events[-2]["usage"]
    assert usage["completion_tokens"] == b.completion_tokens == sum(c.completion_tokens for c in b.choices)


async def test_a_failing_choice_ends_the_stream_with_an_error_and_closes_the_others(pp: Preprocessor) -> None:
    healthy = Script(tok(pp, " a"), 0.01, tok(pp, " b"))  # then waits: an engine still generating
    failing = Script(tok(pp, " x"), 0.02, ConnectionError("worker went away"))
    routed = [await healthy.routed(), await failing.routed()]
    rec = record()
    events = await body_of(await stream_response(routed, builder(pp, 2), rec, {}))
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "internal_error"
    await asyncio.wait_for(healthy.closed.wait(), 5)
    assert failing.closed.is_set()


async def test_an_engine_error_chunk_of_one_choice_fails_the_stream(pp: Preprocessor) -> None:
    healthy = Script(tok(pp, " a"))
    failing = Script(tok(pp, " x"), 0.01, [{"finish_reason": "error", "error": "KV cache exhausted"}])
    routed = [await healthy.routed(), await failing.routed()]
    events = await body_of(await stream_response(routed, builder(pp, 2), record(), {}))
    assert events[-2]["error"]["message"] == "KV cache exhausted"
    await asyncio.wait_for(healthy.closed.wait(), 5)


async def test_a_refusal_on_the_first_output_is_a_status_even_when_streaming(pp: Preprocessor) -> None:
    refusal = [
        {"finish_reason": "error", "error": "grammar does not compile", "error_code": "invalid_request"}
    ]
    other = Script(tok(pp, " a"))
    refused = Script(refusal)
    routed = [await other.routed(), await refused.routed()]
    response = await stream_response(routed, builder(pp, 2), record(), {})
    assert response.status_code == 400
    assert json.loads(bytes(response.body))["error"]["message"] == "grammar does not compile"
    assert other.closed.is_set() and refused.closed.is_set()
    alone = Script(refusal)
    response = await stream_response([await alone.routed()], builder(pp, 1), record(), {})
    assert response.status_code == 400 and alone.closed.is_set()


async def test_collect_answers_in_index_order_whatever_finishes_first(pp: Preprocessor) -> None:
    late = Script(tok(pp, " first"), 0.05, tok(pp, " choice", "stop"))
    early = Script(tok(pp, " second", "length"))
    response = await collect([await late.routed(), await early.routed()], builder(pp, 2), record(), {})
    body = json.loads(bytes(response.body))
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        (0, " first choice", "stop"),
        (1, " second", "length"),
    ]
    assert late.closed.is_set() and early.closed.is_set()


async def test_collect_fails_with_the_failing_choice_and_closes_the_others(pp: Preprocessor) -> None:
    healthy = Script(tok(pp, " a"))
    failing = Script(tok(pp, " x"), 0.01, [{"finish_reason": "error", "error": "out of memory"}])
    rec = record()
    response = await collect([await healthy.routed(), await failing.routed()], builder(pp, 2), rec, {})
    assert response.status_code == 500
    assert json.loads(bytes(response.body))["error"]["message"] == "out of memory"
    assert healthy.closed.is_set() and failing.closed.is_set() and rec.finished
