"""The vLLM worker's command line and request mapping, without starting an engine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput
from vllm.sampling_params import RequestOutputKind

from dynamo.llm.model_card import EngineFeatures
from dynamo.llm.protocols import (
    GuidedDecoding,
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo.vllm import args as worker_args
from dynamo.vllm.args import VllmNotInstalledError, build_parser, parse_args, vllm_is_cpu_build
from dynamo.vllm.cpu import BIND_ENV, claim_cores
from dynamo.vllm.engine import VllmEngine
from dynamo.vllm.sampling import build_sampling_params, convert_logprobs, convert_prompt_logprobs

pytestmark = pytest.mark.vllm

CPU = vllm_is_cpu_build()


def test_vllm_flags_pass_through_unchanged():
    config = parse_args(
        [
            "--model", "/models/x",
            "--enable-prefix-caching",
            "--max-model-len", "1024",
            "--tensor-parallel-size", "1",
            "--kv-cache-dtype", "auto",
            "--block-size", "64",
            "--served-model-name", "alias", "other",
            "--kv-transfer-config", '{"kv_connector":"NixlConnector","kv_role":"kv_both"}',
        ]
    )  # fmt: skip
    ea = config.engine_args
    assert (ea.model, ea.max_model_len, ea.block_size, ea.enable_prefix_caching) == (
        "/models/x",
        1024,
        64,
        True,
    )
    assert ea.kv_transfer_config is not None and ea.kv_transfer_config.kv_connector == "NixlConnector"
    assert config.served_model_name == "alias"
    assert config.max_model_len_cap is None  # the user chose a length


def test_defaults_and_names(monkeypatch):
    monkeypatch.delenv("DYN_NAMESPACE", raising=False)
    config = parse_args(["--model", "/models/x"])
    assert config.namespace == "dynamo"
    assert config.endpoint == "dyn://dynamo.backend.generate"
    assert config.component == "backend"
    assert config.disaggregation_mode == "agg"
    assert config.migration_limit == 0
    assert config.kv_events is True
    assert config.engine_args.enable_prefix_caching is True
    assert (config.discovery_backend, config.request_plane, config.event_plane) == (None, None, None)
    assert config.served_model_name is None  # the card names the model after its folder

    monkeypatch.setenv("DYN_NAMESPACE", "team")
    assert parse_args(["--model", "m"]).endpoint == "dyn://team.backend.generate"


def test_disaggregation_modes_and_aliases():
    prefill = parse_args(["--model", "m", "--namespace", "ns", "--is-prefill-worker"])
    assert prefill.disaggregation_mode == "prefill" and prefill.is_prefill
    assert prefill.endpoint == "dyn://ns.prefill.generate"
    decode = parse_args(["--model", "m", "--is-decode-worker"])
    assert decode.disaggregation_mode == "decode" and decode.is_decode
    assert decode.endpoint == "dyn://dynamo.backend.generate"
    explicit = parse_args(["--model", "m", "--disaggregation-mode", "prefill", "--endpoint", "dyn://a.b.c"])
    assert (explicit.namespace, explicit.component, explicit.endpoint) == ("a", "b", "dyn://a.b.c")
    short = parse_args(["--model", "m", "--namespace", "ns", "--endpoint", "comp.gen"])
    assert (short.namespace, short.endpoint) == ("ns", "dyn://ns.comp.gen")


def test_runtime_flags_and_migration():
    config = parse_args(
        ["--model", "m", "--discovery-backend", "etcd", "--request-plane", "tcp", "--event-plane", "nats",
         "--migration-limit", "3"]
    )  # fmt: skip
    assert (config.discovery_backend, config.request_plane, config.event_plane) == ("etcd", "tcp", "nats")
    assert config.migration_limit == 3
    assert config.args is not None and config.args.event_plane == "nats"


def test_kv_events_follow_prefix_caching():
    assert parse_args(["--model", "m", "--no-enable-prefix-caching"]).kv_events is False
    assert parse_args(["--model", "m", "--no-kv-events"]).kv_events is False
    with pytest.raises(SystemExit) as exc:
        parse_args(["--model", "m", "--kv-events", "--no-enable-prefix-caching"])
    assert exc.value.code == 2


def test_bad_values_exit_2():
    for argv in (
        ["--model", "m", "--migration-limit", "-1"],
        ["--model", "m", "--endpoint", "dyn://a.b.c.d"],
        ["--model", "m", "--namespace", "x", "--endpoint", "dyn://y.b.c"],
        ["--model", "m", "--namespace", "bad.name"],
    ):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        assert exc.value.code == 2


@pytest.mark.skipif(not CPU, reason="CPU build defaults")
def test_cpu_defaults_fill_only_what_the_user_left_out(monkeypatch):
    monkeypatch.delenv("DYN_CPU_CORE", raising=False)
    config = parse_args(["--model", "m"])
    ea = config.engine_args
    assert (ea.enforce_eager, ea.dtype) == (True, "float32")
    assert config.max_model_len_cap == 4096
    assert config.env_defaults == {"VLLM_CPU_KVCACHE_SPACE": "1", "THP_MEM_ALLOC_ENABLE": "1"}
    assert config.is_cpu

    chosen = parse_args(
        ["--model", "m", "--no-enforce-eager", "--dtype", "bfloat16", "--kv-cache-memory-bytes", "1000000000",
         "--cpu-core", "1"]
    )  # fmt: skip
    assert (chosen.engine_args.enforce_eager, chosen.engine_args.dtype) == (False, "bfloat16")
    assert "VLLM_CPU_KVCACHE_SPACE" not in chosen.env_defaults
    assert chosen.cpu_core == "1"
    monkeypatch.setenv("DYN_CPU_CORE", "0-1")
    assert parse_args(["--model", "m"]).cpu_core == "0-1"


def test_xxhash_block_hashes_get_a_fixed_seed():
    config = parse_args(["--model", "m", "--prefix-caching-hash-algo", "xxhash"])
    assert config.env_defaults.get("PYTHONHASHSEED") == "0"
    assert "PYTHONHASHSEED" not in parse_args(["--model", "m"]).env_defaults  # sha256 is deterministic


def test_missing_vllm_is_one_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.setitem(sys.modules, "vllm.engine.arg_utils", None)
    with pytest.raises(VllmNotInstalledError, match="not installed"):
        build_parser()
    with pytest.raises(SystemExit) as exc:
        worker_args.parse_args(["--model", "m"])
    assert exc.value.code != 0 and "vLLM" in str(exc.value.code)


# ----- request mapping ---------------------------------------------------------------------------


def request(**kw) -> PreprocessedRequest:
    base: dict = {"request_id": "r", "model": "m", "token_ids": [1, 2, 3], "eos_token_ids": [2]}
    base.update(kw)
    return PreprocessedRequest(**base)


def test_sampling_params_mapping():
    params = build_sampling_params(
        request(
            sampling=SamplingOptions(
                temperature=0.5, top_p=0.9, top_k=5, min_p=0.1, seed=7,
                presence_penalty=0.1, frequency_penalty=0.2, repetition_penalty=1.1,
            ),
            stop=StopConditions(max_tokens=9, min_tokens=2, stop_token_ids=[42]),
            output=OutputOptions(logprobs=2),
        )
    )  # fmt: skip
    assert params.output_kind == RequestOutputKind.DELTA
    assert params.detokenize is False
    assert (params.temperature, params.top_p, params.top_k, params.min_p, params.seed) == (
        0.5,
        0.9,
        5,
        0.1,
        7,
    )
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (0.1, 0.2, 1.1)
    assert (params.max_tokens, params.min_tokens, params.logprobs) == (9, 2, 2)
    assert params.stop_token_ids == [42, 2]  # EOS ids from the frontend stop too
    assert params.extra_args is None


def test_unset_options_keep_vllm_defaults():
    params = build_sampling_params(request())
    assert params.max_tokens is None  # vLLM fills in the rest of the context
    assert (params.temperature, params.top_k, params.logprobs) == (1.0, 0, None)
    assert build_sampling_params(request(stop=StopConditions(ignore_eos=True))).stop_token_ids == []


def test_kv_transfer_params_pass_through_and_prefill():
    decode = build_sampling_params(
        request(kv_transfer_params={"do_remote_prefill": True, "remote_block_ids": [1]})
    )
    assert decode.extra_args == {"kv_transfer_params": {"do_remote_prefill": True, "remote_block_ids": [1]}}
    prefill = build_sampling_params(request(stop=StopConditions(max_tokens=100, min_tokens=5)), prefill=True)
    assert (prefill.max_tokens, prefill.min_tokens) == (1, 0)
    assert prefill.extra_args == {"kv_transfer_params": {"do_remote_decode": True}}


def test_logprobs_conversion():
    completion = CompletionOutput(
        index=0,
        text="",
        token_ids=[5, 9],
        cumulative_logprob=None,
        logprobs=[
            {5: Logprob(-0.1, rank=1), 6: Logprob(-2.5, rank=2)},
            {9: Logprob(-3.0, rank=4), 1: Logprob(-0.5, rank=1), 3: Logprob(-1.0, rank=2)},
        ],
    )
    out = convert_logprobs(completion, num_top=2)
    assert out is not None
    assert (out[0].token_id, out[0].logprob, out[0].top) == (5, -0.1, [(5, -0.1), (6, -2.5)])
    assert (out[1].token_id, out[1].logprob, out[1].top) == (9, -3.0, [(1, -0.5), (3, -1.0)])
    only_sampled = convert_logprobs(completion, num_top=0)
    assert only_sampled is not None and only_sampled[1].top == []


@pytest.mark.parametrize(
    ("guided", "expected"),
    [
        (GuidedDecoding(json={"type": "object"}), {"json": {"type": "object"}}),
        (GuidedDecoding(json_object=True), {"json_object": True}),
        (GuidedDecoding(regex=r"\d+"), {"regex": r"\d+"}),
        (GuidedDecoding(choice=["a", "b"]), {"choice": ["a", "b"]}),
        (GuidedDecoding(grammar='root ::= "x"'), {"grammar": 'root ::= "x"'}),
    ],
    ids=["json", "json_object", "regex", "choice", "grammar"],
)
def test_guided_decoding_maps_to_structured_outputs(guided, expected):
    so = build_sampling_params(request(guided=guided)).structured_outputs
    assert so is not None
    constraints = ("json", "json_object", "regex", "choice", "grammar", "structural_tag")
    assert {name: getattr(so, name) for name in constraints if getattr(so, name) is not None} == expected
    assert build_sampling_params(request()).structured_outputs is None


def test_logit_bias_and_prompt_logprobs_map_through():
    params = build_sampling_params(
        request(
            sampling=SamplingOptions(logit_bias={5: 100.0, 7: -3.5}),
            output=OutputOptions(prompt_logprobs=2),
        )
    )
    assert params.logit_bias == {5: 100.0, 7: -3.5}
    assert params.prompt_logprobs == 2
    plain = build_sampling_params(request())
    assert (plain.logit_bias, plain.prompt_logprobs) == (None, None)


def test_prompt_logprobs_conversion():
    prompt = [1, 5, 9]
    vllm_entries = [
        None,
        {5: Logprob(-2.0, rank=3), 4: Logprob(-0.5, rank=1), 6: Logprob(-1.0, rank=2)},
        {9: Logprob(-0.1, rank=1), 8: Logprob(-3.0, rank=2)},
    ]
    out = convert_prompt_logprobs(prompt, vllm_entries, num_top=2)
    assert out[0] is None
    assert out[1] is not None and (out[1].token_id, out[1].logprob, out[1].top) == (
        5,
        -2.0,
        [(4, -0.5), (6, -1.0)],  # the prompt token itself is outside the top 2
    )
    assert out[2] is not None and (out[2].token_id, out[2].top) == (9, [(9, -0.1), (8, -3.0)])
    assert [e.top if e else None for e in convert_prompt_logprobs(prompt, vllm_entries, num_top=0)] == [
        None,
        [],
        [],
    ]


def test_vllm_declares_what_it_honours():
    assert VllmEngine.features == EngineFeatures(
        structured_outputs=True, logit_bias=True, prompt_logprobs=True
    )


# ----- CPU core binding --------------------------------------------------------------------------


def test_core_claims_do_not_overlap(monkeypatch, tmp_path: Path):
    monkeypatch.delenv(BIND_ENV, raising=False)
    monkeypatch.setenv("DYN_CPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    first = claim_cores(None)
    assert first.cores == "0,1" and os.environ[BIND_ENV] == "0,1"
    monkeypatch.delenv(BIND_ENV)
    second = claim_cores(None)
    assert second.cores == "2,3"
    monkeypatch.delenv(BIND_ENV)
    third = claim_cores(None)  # every slot is taken: share, with a warning
    assert third.cores == "0,1,2,3"
    third.release()
    first.release()
    again = claim_cores(None)
    assert again.cores == "0,1"
    again.release()
    second.release()
    assert BIND_ENV not in os.environ


def test_explicit_binding_wins(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("DYN_CPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv(BIND_ENV, "3")
    assert claim_cores("1").cores is None and os.environ[BIND_ENV] == "3"
    monkeypatch.delenv(BIND_ENV)
    claim = claim_cores("1")
    assert claim.cores == "1" and os.environ[BIND_ENV] == "1"
    claim.release()
    assert BIND_ENV not in os.environ
