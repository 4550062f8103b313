"""``python -m dynamo.trtllm`` command lines: the guides' and our examples' commands (with the
example engine YAML files) become the LLM-API options the engine gets; the order in which the
YAML, flags and overrides combine; typos and contradictions fail; without TensorRT-LLM the
worker says how to install it."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from dynamo.trtllm.args import build_parser, parse_args, trtllm_installed

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "deploy" / "examples" / "trtllm" / "engine_configs"
MODEL = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"


def guide(config: str = "agg.yaml", extra: str = "") -> str:
    """Seed 004 / deploy/examples/trtllm/*.yaml, with $DYNAMO_HOME resolved."""
    return f"--model-path {MODEL} --served-model-name {MODEL} --extra-engine-args {CONFIGS / config} {extra}"


def parse(line: str):
    return parse_args(shlex.split(line))


def fails(line: str) -> str:
    err = io.StringIO()
    with pytest.raises(SystemExit) as exc, redirect_stderr(err):
        parse(line)
    assert exc.value.code == 2
    return err.getvalue()


def test_the_aggregated_example_becomes_llm_api_options():
    config = parse(guide())
    kw = config.engine_kwargs
    assert kw["model"] == MODEL and config.served_model_name == MODEL
    assert kw["backend"] == "pytorch" and kw["skip_tokenizer_init"] is True
    assert kw["max_batch_size"] == 16 and kw["max_seq_len"] == 8192 and kw["trust_remote_code"] is True
    assert kw["kv_cache_config"] == {
        "free_gpu_memory_fraction": 0.85,
        "enable_block_reuse": True,
        "event_buffer_max_size": 1024,
    }
    assert kw["cuda_graph_config"] == {"max_batch_size": 16}
    assert config.kv_events and config.kv_block_size == 32 and config.disaggregation_mode == "agg"
    assert config.endpoint == "dyn://dynamo.backend.generate" and "cache_transceiver_config" not in kw


def test_prefill_and_decode_examples():
    prefill = parse(guide("prefill.yaml", "--disaggregation-mode prefill --namespace trtllm-disagg"))
    assert prefill.is_prefill and prefill.endpoint == "dyn://trtllm-disagg.prefill.generate"
    assert prefill.engine_kwargs["cache_transceiver_config"] == {"backend": "DEFAULT"}
    assert prefill.engine_kwargs["disable_overlap_scheduler"] is True
    decode = parse(guide("decode.yaml", "--disaggregation-mode decode"))
    assert decode.is_decode and decode.endpoint_id.component == "backend"
    assert decode.engine_kwargs["disable_overlap_scheduler"] is False  # the YAML's choice stands
    assert parse(guide(extra="--disaggregation-mode prefill_and_decode")).disaggregation_mode == "agg"


def test_disaggregation_strategy_is_read_like_the_frontend_reads_it(monkeypatch):
    monkeypatch.delenv("DISAGGREGATION_STRATEGY", raising=False)
    assert parse(guide()).disaggregation_strategy == "decode_first"  # the guide's default
    monkeypatch.setenv("DISAGGREGATION_STRATEGY", "prefill_first")
    assert parse(guide()).disaggregation_strategy == "prefill_first"
    assert (
        parse(guide(extra="--disaggregation-strategy decode_first")).disaggregation_strategy == "decode_first"
    )
    monkeypatch.setenv("DISAGGREGATION_STRATEGY", "sideways")
    assert "DISAGGREGATION_STRATEGY='sideways'" in fails(guide())


def test_flags_beat_the_yaml_and_overrides_beat_both():
    config = parse(
        guide(
            extra="--tensor-parallel-size 2 --max-batch-size 8 --free-gpu-memory-fraction 0.5 --kv-block-size 64 "
        )
        + shlex.quote(
            "--override-engine-args="
            + json.dumps(
                {"max_batch_size": 4, "kv_cache_config": {"enable_block_reuse": True, "dtype": "fp8"}}
            )
        )
    )
    kw = config.engine_kwargs
    assert kw["tensor_parallel_size"] == 2 and kw["max_batch_size"] == 4
    assert kw["kv_cache_config"] == {
        "free_gpu_memory_fraction": 0.5,
        "enable_block_reuse": True,
        "tokens_per_block": 64,
        "dtype": "fp8",
        "event_buffer_max_size": 1024,
    }
    assert config.kv_block_size == 64


def test_kv_events_follow_block_reuse():
    no_reuse = "--override-engine-args " + shlex.quote('{"kv_cache_config": {"enable_block_reuse": false}}')
    assert parse(guide(extra=no_reuse)).kv_events is False
    assert "block reuse" in fails(guide(extra=no_reuse + " --kv-events"))
    off = parse(guide(extra="--no-kv-events"))
    assert off.kv_events is False and "event_buffer_max_size" not in off.engine_kwargs["kv_cache_config"]
    assert parse(guide(extra="--publish-events-and-metrics")).kv_events is True  # NVIDIA Dynamo's flag


@pytest.mark.parametrize(
    "line",
    [
        guide().replace("--served-model-name", "--served-model"),  # no abbreviations
        guide().replace("--extra-engine-args", "--extra-engine-arg"),
        guide(extra="--disaggregation-mode prefil"),
        guide(extra="--disaggregation-strategy decode-first"),
        f"--served-model-name {MODEL}",  # no model
    ],
)
def test_typos_fail(line):
    assert "error:" in fails(line)


def test_bad_files_and_values_fail_with_a_reason(tmp_path):
    assert "No such file" in fails(f"--model-path m --extra-engine-args {tmp_path / 'nope.yaml'}")
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert "mapping" in fails(f"--model-path m --extra-engine-args {tmp_path / 'list.yaml'}")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    assert "not valid YAML" in fails(f"--model-path m --extra-engine-args {tmp_path / 'bad.yaml'}")
    assert "not JSON" in fails("--model-path m --override-engine-args {x")
    assert "--migration-limit must be >= 0" in fails("--model-path m --migration-limit -2")


def test_every_example_command_parses_with_its_yaml():
    """The commands in deploy/examples/trtllm with $DYNAMO_HOME pointing at this checkout."""
    import yaml

    from tests.k8s.k8s_commands import invocations

    seen = 0
    for path in sorted((ROOT / "deploy" / "examples" / "trtllm").glob("*.yaml")):
        for service in yaml.safe_load(path.read_text())["spec"]["services"].values():
            for component, args in invocations(service["extraPodSpec"]["mainContainer"]):
                if component == "trtllm":
                    seen += 1
                    parse_args([a.replace("$DYNAMO_HOME", str(ROOT)) for a in args])
    assert seen == 8  # agg, agg_router, disagg (2), disagg_router (2), disagg_planner (2)


@pytest.mark.skipif(trtllm_installed(), reason="checks the error when TensorRT-LLM is missing")
def test_the_worker_without_trtllm_exits_1_with_one_line_saying_how_to_install_it():
    assert "not installed" in build_parser().format_help()
    proc = subprocess.run(
        [sys.executable, "-m", "dynamo.trtllm", *shlex.split(guide())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    # There is no `trtllm` extra any more (TensorRT-LLM's pins clash with ours): the line points to
    # the by-hand install in README.md instead.
    assert len(lines) == 1 and "pip install --no-deps -e ." in lines[0] and "README.md" in lines[0], (
        proc.stderr
    )


def test_a_guided_decoding_backend_keeps_the_tokenizer_for_structured_outputs():
    plain = parse(guide())
    assert plain.structured_outputs is False and plain.engine_kwargs["skip_tokenizer_init"] is True
    guided = parse(guide(extra="""--override-engine-args '{"guided_decoding_backend": "xgrammar"}'"""))
    assert guided.structured_outputs is True
    assert guided.engine_kwargs["guided_decoding_backend"] == "xgrammar"
    assert guided.engine_kwargs["skip_tokenizer_init"] is False  # the guided decoder compiles against it
    both = """--override-engine-args '{"guided_decoding_backend": "xgrammar", "skip_tokenizer_init": true}'"""
    assert "needs TensorRT-LLM's tokenizer" in fails(guide(extra=both))
