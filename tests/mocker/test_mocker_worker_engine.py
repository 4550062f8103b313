"""``MockerWorkerEngine`` (the mocker on the worker base) on SmolLM2's tokenizer: its card facts
declare no decoding features, and a request that asks for one anyway is refused with one
``invalid_request`` chunk instead of a simulated answer that ignores it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamo.llm.model_card import EngineFeatures
from dynamo.llm.protocols import (
    GuidedDecoding,
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo.mocker.worker import MockerWorkerEngine
from dynamo.worker import EngineContext

pytestmark = pytest.mark.timeout(60)


def request(rid: str, **kw) -> PreprocessedRequest:
    return PreprocessedRequest(
        request_id=rid, model="mock", token_ids=list(range(10, 30)), stop=StopConditions(max_tokens=3), **kw
    )


async def test_mocker_declares_no_features_and_refuses_what_it_cannot_simulate(smollm2_tokenizer_dir: Path):
    config = MockerWorkerEngine.parse_config(
        ["--model-path", str(smollm2_tokenizer_dir), "--speedup-ratio", "1000"]
    )
    engine = MockerWorkerEngine(config, EngineContext(worker_id=0x1))
    facts = await engine.start()
    try:
        assert facts.features == EngineFeatures() == MockerWorkerEngine.features
        plain = [o async for o in engine.generate(request("plain"))]
        assert sum(len(o.token_ids) for o in plain) == 3 and plain[-1].finish_reason == "length"
        for rid, kw, named in (
            ("guided", {"guided": GuidedDecoding(json_object=True)}, "structured outputs"),
            ("bias", {"sampling": SamplingOptions(logit_bias={5: 10.0})}, "logit_bias"),
            ("plp", {"output": OutputOptions(prompt_logprobs=0)}, "prompt logprobs"),
        ):
            outs = [o async for o in engine.generate(request(rid, **kw))]
            assert [(o.finish_reason, o.error_code, o.token_ids) for o in outs] == [
                ("error", "invalid_request", [])
            ]
            assert named in (outs[0].error or "")
    finally:
        await engine.stop()
