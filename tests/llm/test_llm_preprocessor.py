"""Preprocessing: OpenAI requests -> PreprocessedRequest, with context-length checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from dynamo.llm.errors import RequestError
from dynamo.llm.model_card import CardFileError, ModelDeploymentCard
from dynamo.llm.openai import parse_chat_request, parse_completion_request
from dynamo.llm.preprocessor import PreprocessedOutput, Preprocessor
from dynamo.llm.protocols import request_from_wire, request_to_wire

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
IM_START = 1


def chat(pre: Preprocessor, **fields: Any) -> PreprocessedOutput:
    body = {"model": "SmolLM2-135M-Instruct", "messages": QUESTION, **fields}
    return pre.preprocess_chat(parse_chat_request(json.dumps(body)), "req-1")


def completion(pre: Preprocessor, **fields: Any) -> PreprocessedOutput:
    body = {"model": "SmolLM2-135M-Instruct", "prompt": "Once upon a time", **fields}
    return pre.preprocess_completion(parse_completion_request(json.dumps(body)), "req-2")


@pytest.fixture(scope="module")
def small_context(smollm2_dir: Path) -> Preprocessor:
    card = ModelDeploymentCard.from_local_path(smollm2_dir, context_length=64)
    return Preprocessor.from_card(card, card.read_files())


def test_chat_prompt_is_the_rendered_template_tokenized_once(preprocessor: Preprocessor) -> None:
    out = chat(preprocessor)
    text = preprocessor.render_chat(parse_chat_request(json.dumps({"model": "m", "messages": QUESTION})))
    assert list(out.request.token_ids) == preprocessor.tokenizer.encode(text, add_special_tokens=False).ids
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert out.request.token_ids[0] == IM_START and out.request.token_ids[1] != IM_START  # no doubled BOS
    assert out.prompt_len == len(out.request.token_ids)
    assert out.request.request_id == "req-1"
    assert out.request.model == "SmolLM2-135M-Instruct"
    assert out.request.eos_token_ids == [2]


def test_chat_defaults(preprocessor: Preprocessor) -> None:
    out = chat(preprocessor)
    assert out.request.stop.max_tokens == preprocessor.context_length - out.prompt_len
    assert out.request.stop.min_tokens == 0 and out.request.stop.ignore_eos is False
    assert out.request.output.logprobs is None and out.logprobs is None
    assert out.stop_strings == [] and out.backend_instance_id is None


def test_sampling_stop_and_logprobs_mapping(preprocessor: Preprocessor) -> None:
    out = chat(
        preprocessor,
        temperature=0.7,
        top_p=0.9,
        top_k=0,
        seed=3,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        max_completion_tokens=12,
        min_tokens=2,
        stop=["\n\n", "END"],
        stop_token_ids=[2],
        include_stop_str_in_output=True,
        logprobs=True,
        top_logprobs=4,
        nvext={"min_p": 0.1, "repetition_penalty": 1.1, "ignore_eos": True, "annotations": ["x"]},
    )
    s, stop = out.request.sampling, out.request.stop
    assert (s.temperature, s.top_p, s.top_k, s.seed) == (0.7, 0.9, -1, 3)
    assert (s.presence_penalty, s.frequency_penalty, s.min_p, s.repetition_penalty) == (0.5, -0.5, 0.1, 1.1)
    assert (stop.max_tokens, stop.min_tokens, stop.stop_token_ids, stop.ignore_eos) == (12, 2, [2], True)
    assert out.stop_strings == ["\n\n", "END"] and out.include_stop_str_in_output is True
    assert out.request.output.logprobs == 4 == out.logprobs
    assert out.request.annotations == ["x"]


def test_top_level_extensions_win_over_nvext(preprocessor: Preprocessor) -> None:
    out = chat(preprocessor, top_k=5, ignore_eos=False, nvext={"top_k": 9, "ignore_eos": True})
    assert out.request.sampling.top_k == 5 and out.request.stop.ignore_eos is False
    out = chat(preprocessor, temperature=1.0, nvext={"greed_sampling": True})
    assert out.request.sampling.temperature == 0.0


def test_logprobs_without_top_logprobs_means_sampled_token_only(preprocessor: Preprocessor) -> None:
    assert chat(preprocessor, logprobs=True).request.output.logprobs == 0


@pytest.mark.parametrize(("value", "expected"), [(7, 7), ("ff", 255), ("0x10", 16)])
def test_backend_instance_id(preprocessor: Preprocessor, value: Any, expected: int) -> None:
    assert chat(preprocessor, nvext={"backend_instance_id": value}).backend_instance_id == expected


def test_bad_backend_instance_id(preprocessor: Preprocessor) -> None:
    with pytest.raises(RequestError) as info:
        chat(preprocessor, nvext={"backend_instance_id": "worker-1"})
    assert info.value.param == "nvext.backend_instance_id"


def test_preprocessed_request_crosses_the_wire(preprocessor: Preprocessor) -> None:

    out = chat(preprocessor, temperature=0.0, stop="x")
    assert request_from_wire(request_to_wire(out.request)) == out.request


@pytest.mark.parametrize(
    "prompt", ["Once upon a time", ["Once upon a time"], [6403, 1980, 253, 655], [[6403, 1980, 253, 655]]]
)
def test_completion_prompt_forms(preprocessor: Preprocessor, prompt: Any) -> None:
    out = completion(preprocessor, prompt=prompt)
    assert list(out.request.token_ids) == [6403, 1980, 253, 655]
    assert out.request.stop.max_tokens == 16


def test_token_data_replaces_the_prompt(preprocessor: Preprocessor) -> None:
    assert completion(preprocessor, nvext={"token_data": [5, 6]}).request.token_ids.tolist() == [5, 6]
    assert chat(preprocessor, nvext={"token_data": [7]}).request.token_ids.tolist() == [7]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": [1, 2, 10**6]}, "prompt"),
        ({"stop_token_ids": [10**6]}, "stop_token_ids"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
    ],
)
def test_completion_errors(preprocessor: Preprocessor, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as info:
        completion(preprocessor, **fields)
    assert (info.value.status, info.value.param) == (400, param)


def test_structured_output_refused(preprocessor: Preprocessor) -> None:
    with pytest.raises(RequestError) as info:
        chat(preprocessor, response_format={"type": "json_object"})
    assert info.value.param == "response_format"
    assert chat(preprocessor, response_format={"type": "text"}).prompt_len > 0


def test_prompt_longer_than_context(small_context: Preprocessor) -> None:
    long_messages = [{"role": "user", "content": "word " * 100}]
    with pytest.raises(RequestError) as info:
        chat(small_context, messages=long_messages)
    err = info.value
    assert (err.status, err.param, err.code) == (400, "messages", "context_length_exceeded")
    assert "64" in err.message
    with pytest.raises(RequestError) as info:
        completion(small_context, prompt="word " * 100)
    assert info.value.param == "prompt"


def test_prompt_plus_max_tokens_over_context(small_context: Preprocessor) -> None:
    prompt_len = chat(small_context).prompt_len
    assert chat(small_context, max_tokens=64 - prompt_len).request.stop.max_tokens == 64 - prompt_len
    with pytest.raises(RequestError) as info:
        chat(small_context, max_tokens=65 - prompt_len)
    assert (info.value.param, info.value.code) == ("max_tokens", "context_length_exceeded")
    with pytest.raises(RequestError) as info:
        chat(small_context, max_completion_tokens=1000)
    assert info.value.param == "max_completion_tokens"
    with pytest.raises(RequestError) as info:
        completion(small_context, max_tokens=64)
    assert info.value.param == "max_tokens"


def test_completion_default_max_tokens_shrinks_to_the_context(small_context: Preprocessor) -> None:
    out = completion(small_context, prompt=list(range(10, 60)))
    assert out.request.stop.max_tokens == 14


def test_model_without_chat_template(smollm2_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    shutil.copytree(smollm2_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    card = ModelDeploymentCard.from_local_path(folder)
    assert card.model_type == ["completions"]
    pre = Preprocessor.from_card(card, card.read_files())
    with pytest.raises(RequestError) as info:
        chat(pre)
    assert info.value.status == 400 and "completions" in info.value.message
    assert completion(pre).prompt_len == 4


def test_from_card_checks_file_hashes(
    smollm2_card: ModelDeploymentCard, smollm2_files: dict[str, bytes]
) -> None:
    tampered = dict(smollm2_files, **{"tokenizer_config.json": b"{}"})
    with pytest.raises(CardFileError):
        Preprocessor.from_card(smollm2_card, tampered)


def test_detokenizer_for_a_request(preprocessor: Preprocessor) -> None:
    out = chat(preprocessor, stop=" Paris")
    detok = preprocessor.make_detokenizer(out)
    ids = preprocessor.tokenizer.encode(
        "The capital of France is Paris.<|im_end|>", add_special_tokens=False
    ).ids
    result = detok.add(ids)
    assert (result.text, result.stopped, result.stop_string) == ("The capital of France is", True, " Paris")
    assert preprocessor.token_text(ids[0]) == "The"


def test_logprob_text_of_partial_utf8_tokens_is_completed_by_context_as_vllm(
    preprocessor: Preprocessor,
) -> None:
    """A token holding part of a multi-byte character has no text of its own ("" as vLLM writes
    it); the token that completes the character, decoded after its context, carries it whole."""
    ids = preprocessor.tokenizer.encode("日本語 🙂", add_special_tokens=False).ids
    texts = [preprocessor.token_text(t, ids[:k]) for k, t in enumerate(ids)]
    assert "".join(texts) == "日本語 🙂"
    assert any(t == "" for t in texts)  # the leading bytes of a character
    assert all(preprocessor.token_text(t) in ("", preprocessor.tokenizer.decode([t])) for t in ids)
    assert preprocessor.token_text(ids[-1]) == " 🙂"  # complete on its own: unchanged
