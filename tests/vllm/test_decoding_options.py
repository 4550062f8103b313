"""Structured outputs, ``logit_bias`` and prompt logprobs on the in-process vLLM engine (SmolLM2, CPU).

What the frontend sends in ``PreprocessedRequest.guided`` / ``sampling.logit_bias`` /
``output.prompt_logprobs`` must be honoured by the real engine: guided output matches its schema,
regex, choice or grammar; a large bias forces a token; prompt logprobs equal vLLM's own for the same
prompt (and transformers' within float tolerance); a constraint the engine cannot compile ends with
one ``invalid_request`` error chunk. Shares the engine of ``vllm_engine`` (conftest.py) with the
module after it.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("vllm")

import jsonschema

from dynamo.llm.model_card import EngineFeatures
from dynamo.llm.protocols import (
    ERROR_INVALID_REQUEST,
    EngineOutput,
    GuidedDecoding,
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo.vllm.engine import VllmEngine
from dynamo.worker import EngineFacts

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(180)]

EOS = 2  # <|im_end|>
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir))


@pytest.fixture(scope="module")
def chat(tokenizer):
    def ids(question: str) -> list[int]:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(text, add_special_tokens=False).input_ids)

    return ids


def request(
    token_ids: list[int],
    rid: str,
    *,
    max_tokens: int = 64,
    guided: GuidedDecoding | None = None,
    logit_bias: dict[int, float] | None = None,
    prompt_logprobs: int | None = None,
) -> PreprocessedRequest:
    return PreprocessedRequest(
        request_id=rid,
        model="smollm2",
        token_ids=token_ids,
        sampling=SamplingOptions(temperature=0.0, logit_bias=logit_bias),
        stop=StopConditions(max_tokens=max_tokens),
        output=OutputOptions(prompt_logprobs=prompt_logprobs),
        guided=guided,
        eos_token_ids=[EOS],
    )


async def collect(engine: VllmEngine, req: PreprocessedRequest) -> list[EngineOutput]:
    return [chunk async for chunk in engine.generate(req)]


def answer(tokenizer, chunks: list[EngineOutput]) -> str:
    """The generated text without the closing EOS; fails if the engine did not stop on its own."""
    ids = [t for c in chunks for t in c.token_ids]
    assert chunks[-1].finish_reason == "stop", (chunks[-1], tokenizer.decode(ids))
    return tokenizer.decode(ids[:-1] if ids and ids[-1] == EOS else ids)


async def test_the_engine_declares_what_it_honours(vllm_engine: VllmEngine):
    features = EngineFacts.of(vllm_engine).features  # what goes on the model card
    assert features == EngineFeatures(structured_outputs=True, logit_bias=True, prompt_logprobs=True)


# ----- structured outputs --------------------------------------------------------------------------


async def test_json_schema_output_validates(vllm_engine: VllmEngine, tokenizer, chat):
    guided = GuidedDecoding(json=PERSON)
    chunks = await collect(
        vllm_engine, request(chat("Describe a person as JSON."), "json", max_tokens=80, guided=guided)
    )
    value = json.loads(answer(tokenizer, chunks))
    jsonschema.validate(value, PERSON)


async def test_json_object_output_is_a_json_object(vllm_engine: VllmEngine, tokenizer, chat):
    guided = GuidedDecoding(json_object=True)
    prompt = chat("What is the capital of France? Answer in JSON with one key, city.")
    chunks = await collect(vllm_engine, request(prompt, "json-object", max_tokens=120, guided=guided))
    assert isinstance(json.loads(answer(tokenizer, chunks)), dict)


async def test_regex_output_matches(vllm_engine: VllmEngine, tokenizer, chat):
    pattern = r"[A-Z]{2}-\d{3}"
    guided = GuidedDecoding(regex=pattern)
    chunks = await collect(vllm_engine, request(chat("Invent a product code."), "regex", guided=guided))
    assert re.fullmatch(pattern, answer(tokenizer, chunks))


async def test_choice_output_is_one_of_the_choices(vllm_engine: VllmEngine, tokenizer, chat):
    choices = ["sunny day", "heavy rain", "snow storm"]
    prompt = chat("What weather makes an umbrella useful?")
    chunks = await collect(vllm_engine, request(prompt, "choice", guided=GuidedDecoding(choice=choices)))
    assert answer(tokenizer, chunks) in choices


@pytest.mark.parametrize(
    "grammar",
    [
        'root ::= "The answer is " ("yes" | "no") "."',  # EBNF (GBNF)
        'start: "The answer is " ANSWER "."\nANSWER: "yes" | "no"',  # Lark
    ],
    ids=["ebnf", "lark"],
)
async def test_grammar_output_is_in_the_language(vllm_engine: VllmEngine, tokenizer, chat, grammar: str):
    prompt = chat("Is Paris in France?")
    chunks = await collect(vllm_engine, request(prompt, "grammar", guided=GuidedDecoding(grammar=grammar)))
    assert answer(tokenizer, chunks) in ("The answer is yes.", "The answer is no.")


@pytest.mark.parametrize(
    ("guided", "says"),
    [
        (GuidedDecoding(json={"type": "no-such-type"}), "no-such-type"),
        (GuidedDecoding(json={"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}), "nowhere"),
        (GuidedDecoding(regex="(unclosed"), "regex"),
        (GuidedDecoding(grammar="root ::= ("), "grammar"),
        (GuidedDecoding(choice=[]), "empty"),
    ],
    ids=["json-type", "json-ref", "regex", "grammar", "choice"],
)
async def test_constraint_the_engine_cannot_compile_is_an_invalid_request(
    vllm_engine: VllmEngine, chat, guided: GuidedDecoding, says: str
):
    chunks = await collect(vllm_engine, request(chat("Hi"), "bad-guided", guided=guided))
    assert len(chunks) == 1
    (chunk,) = chunks
    assert (chunk.finish_reason, chunk.error_code) == ("error", ERROR_INVALID_REQUEST)
    assert chunk.error is not None and says in chunk.error.lower()
    assert chunk.token_ids == []
    assert vllm_engine.num_requests_in_flight == 0


# ----- logit_bias ----------------------------------------------------------------------------------


async def test_logit_bias_forces_and_bans_tokens(vllm_engine: VllmEngine, tokenizer, chat):
    prompt = chat("What is the capital of France?")
    plain = [
        t for c in await collect(vllm_engine, request(prompt, "plain", max_tokens=4)) for t in c.token_ids
    ]
    comma = tokenizer.convert_tokens_to_ids(",")
    assert comma not in plain

    forced = await collect(vllm_engine, request(prompt, "forced", max_tokens=4, logit_bias={comma: 100.0}))
    assert [t for c in forced for t in c.token_ids] == [comma] * 4

    banned = await collect(
        vllm_engine, request(prompt, "banned", max_tokens=4, logit_bias={plain[0]: -100.0})
    )
    first = next(t for c in banned for t in c.token_ids)
    assert first != plain[0]


async def test_logit_bias_outside_the_vocabulary_is_an_invalid_request(vllm_engine: VllmEngine, chat):
    chunks = await collect(vllm_engine, request(chat("Hi"), "bad-bias", logit_bias={10_000_000: 5.0}))
    assert [(c.finish_reason, c.error_code) for c in chunks] == [("error", ERROR_INVALID_REQUEST)]
    assert "logit_bias" in (chunks[0].error or "")


# ----- prompt logprobs -----------------------------------------------------------------------------


async def vllm_prompt_logprobs(
    engine: VllmEngine, prompt: list[int], k: int
) -> list[dict[int, tuple[float, int | None]]]:
    """vLLM's own answer for the prompt, asked of the same ``AsyncLLM`` directly (not through our
    adapter): per position, {token_id: (logprob, rank)}; position 0 empty."""
    from vllm import SamplingParams
    from vllm.inputs import tokens_input
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(
        max_tokens=1, prompt_logprobs=k, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY
    )
    final = None
    async for out in engine.async_llm.generate(tokens_input(prompt), params, "reference-prompt-logprobs"):
        final = out
    assert final is not None and final.prompt_logprobs is not None
    return [
        {tid: (lp.logprob, lp.rank) for tid, lp in (position or {}).items()}
        for position in final.prompt_logprobs
    ]


def transformers_prompt_logprobs(model_dir: Path, prompt: list[int]) -> list[float]:
    """Reference: each prompt token's logprob given the tokens before it, from HF transformers (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return [float(logprobs[i - 1, prompt[i]]) for i in range(1, len(prompt))]


async def test_prompt_logprobs_equal_vllms_own_and_come_once(
    vllm_engine: VllmEngine, smollm2_dir: Path, chat
):
    prompt = chat("Name three colours.")
    k = 3
    hf = asyncio.create_task(asyncio.to_thread(transformers_prompt_logprobs, smollm2_dir, prompt))
    chunks = await collect(vllm_engine, request(prompt, "plp", max_tokens=5, prompt_logprobs=k))
    reference = await vllm_prompt_logprobs(vllm_engine, prompt, k)

    got = chunks[0].prompt_logprobs
    assert got is not None and len(got) == len(prompt)
    assert all(c.prompt_logprobs is None for c in chunks[1:])
    assert got[0] is None and reference[0] == {}
    for position, (token_id, entry, ref) in enumerate(zip(prompt, got, reference, strict=True)):
        if position == 0:
            continue
        assert entry is not None and entry.token_id == token_id
        assert entry.logprob == ref[token_id][0]
        best = sorted((rank, tid, lp) for tid, (lp, rank) in ref.items() if rank is not None and rank <= k)
        assert entry.top == [(tid, lp) for _, tid, lp in best]
        assert len(entry.top) == k

    expected = await hf
    assert [e.logprob for e in got[1:] if e is not None] == pytest.approx(expected, abs=2e-3)

    # Asked again, the prompt is in the prefix cache: vLLM recomputes it for its logprobs.
    again = await collect(vllm_engine, request(prompt, "plp-again", max_tokens=1, prompt_logprobs=k))
    assert again[0].prompt_logprobs == got


async def test_prompt_logprobs_zero_gives_only_the_prompt_tokens(vllm_engine: VllmEngine, chat):
    prompt = chat("Hello!")
    chunks = await collect(vllm_engine, request(prompt, "plp0", max_tokens=1, prompt_logprobs=0))
    got = chunks[0].prompt_logprobs
    assert got is not None and got[0] is None
    assert [e.token_id for e in got[1:] if e is not None] == prompt[1:]
    assert all(e is not None and e.top == [] and e.logprob <= 0.0 for e in got[1:])


async def test_too_many_prompt_logprobs_is_an_invalid_request(vllm_engine: VllmEngine, chat):
    chunks = await collect(vllm_engine, request(chat("Hi"), "plp-many", prompt_logprobs=99))
    assert [(c.finish_reason, c.error_code) for c in chunks] == [("error", ERROR_INVALID_REQUEST)]
    assert "prompt logprobs" in (chunks[0].error or "").lower()
