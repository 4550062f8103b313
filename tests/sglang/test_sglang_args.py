"""``python -m dynamo.sglang`` command lines: the guides' and our examples' commands parse into the
configuration the engine gets; typos and contradictions fail; without SGLang the worker says how
to install it."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from contextlib import redirect_stderr

import pytest

from dynamo.sglang.args import DEFAULT_PAGE_SIZE, build_parser, parse_args, sglang_installed

GUIDE = "--model-path deepseek-ai/DeepSeek-R1-Distill-Llama-8B --tp 1 --trust-remote-code"  # seed 002
EXAMPLE = (  # deploy/examples/sglang/disagg.yaml, the prefill worker
    "--model-path deepseek-ai/DeepSeek-R1-Distill-Llama-8B --served-model-name deepseek-ai/DeepSeek-R1-Distill-Llama-8B "
    "--tp 1 --trust-remote-code --disaggregation-mode prefill --disaggregation-transfer-backend nixl"
)


def parse(line: str):
    return parse_args(shlex.split(line))


def fails(line: str) -> str:
    err = io.StringIO()
    with pytest.raises(SystemExit) as exc, redirect_stderr(err):
        parse(line)
    assert exc.value.code == 2
    return err.getvalue()


def test_the_guide_command_parses_into_engine_arguments():
    config = parse(GUIDE)
    kw = config.engine_kwargs
    assert kw["model_path"] == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    assert kw["tp_size"] == 1 and kw["trust_remote_code"] is True
    assert kw["skip_tokenizer_init"] is True  # token ids in, token ids out
    assert kw["page_size"] == DEFAULT_PAGE_SIZE == config.page_size
    assert config.disaggregation_mode == "agg" and config.endpoint == "dyn://dynamo.backend.generate"
    assert config.served_model_name is None and config.kv_events is True


def test_a_prefill_worker_serves_the_prefill_component_on_its_own_bootstrap_port():
    prefill = parse(EXAMPLE + " --namespace sglang-disagg")
    assert prefill.is_prefill and prefill.endpoint == "dyn://sglang-disagg.prefill.generate"
    assert prefill.engine_kwargs["disaggregation_transfer_backend"] == "nixl"
    assert prefill.engine_kwargs["disaggregation_bootstrap_port"] not in (None, 8998)  # free, per worker
    decode = parse(EXAMPLE.replace("prefill", "decode"))
    assert decode.is_decode and decode.endpoint_id.component == "backend"
    assert (
        parse(EXAMPLE + " --disaggregation-bootstrap-port 9100").engine_kwargs[
            "disaggregation_bootstrap_port"
        ]
        == 9100
    )


def test_flags_the_user_gives_win_over_our_defaults():
    config = parse(GUIDE + " --page-size 64 --served-model-name r1 --context-length 4096 --migration-limit 3")
    assert config.page_size == 64 and config.served_model_name == "r1"
    assert config.engine_kwargs["context_length"] == 4096 and config.migration_limit == 3


@pytest.mark.parametrize(
    "line",
    [
        GUIDE.replace("--tp 1", "--tpp 1"),
        GUIDE.replace("--trust-remote-code", "--trust-remote"),  # no abbreviations
        GUIDE + " --disaggregation-mode prefil",
        GUIDE + " --disaggregation-transfer-backend nixxl",
        "--tp 1",  # no model
    ],
)
def test_typos_fail(line):
    assert "error:" in fails(line)


def test_contradictions_fail_with_a_reason():
    assert "--migration-limit must be >= 0" in fails(GUIDE + " --migration-limit -1")
    assert "radix cache" in fails(GUIDE + " --disable-radix-cache --kv-events")
    assert "contradicts" in fails(GUIDE + " --namespace a --endpoint dyn://b.backend.generate")
    assert "not JSON" in fails(GUIDE + " --kv-events-config {nope")


def test_kv_events_follow_the_radix_cache_and_the_users_publisher():
    assert parse(GUIDE + " --disable-radix-cache").kv_events is False
    assert parse(GUIDE + " --no-kv-events").kv_events is False
    own = {"publisher": "zmq", "endpoint": "tcp://*:5600", "topic": "kv"}
    config = parse(GUIDE + f" --kv-events-config '{json.dumps(own)}'")
    assert config.kv_events is True and config.kv_events_publisher == ("tcp://*:5600", "kv")
    assert parse(GUIDE + """ --kv-events-config '{"publisher": "null"}'""").kv_events is False


@pytest.mark.skipif(sglang_installed(), reason="checks the parser used when SGLang is missing")
def test_help_says_which_flags_it_knows():
    text = build_parser().format_help()
    assert "SGLang is not installed" in text and "pip install .[sglang]" in text
    assert "--disaggregation-bootstrap-port" in text and "--kv-events" in text


@pytest.mark.skipif(sglang_installed(), reason="checks the error when SGLang is missing")
def test_the_worker_without_sglang_exits_1_with_one_line_naming_the_extra():
    proc = subprocess.run(
        [sys.executable, "-m", "dynamo.sglang", *shlex.split(GUIDE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install .[sglang]" in lines[0], proc.stderr


def test_with_sglang_installed_its_own_flags_pass_through(monkeypatch):
    """SGLang's own parser, stood in for by ``FakeServerArgs`` (SGLang cannot be installed here)."""
    import types

    from dynamo.sglang import args as sglang_args
    from tests.sglang.fake_sglang import FakeServerArgs

    server_args = types.ModuleType("sglang.srt.server_args")
    server_args.ServerArgs = FakeServerArgs  # type: ignore[attr-defined]
    for name, module in {
        "sglang": types.ModuleType("sglang"),
        "sglang.srt": types.ModuleType("sglang.srt"),
        "sglang.srt.server_args": server_args,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(sglang_args, "sglang_installed", lambda: True)

    parser = build_parser()
    assert "all SGLang server flags pass through" in (parser.description or "")
    config = parse(EXAMPLE.replace("prefill", "decode") + " --schedule-policy lpm")
    assert config.passthrough and config.is_decode
    kw = config.engine_kwargs
    assert set(kw) <= {
        f for f in FakeServerArgs.__dataclass_fields__
    }  # only ServerArgs fields reach the engine
    assert kw["tp_size"] == 1 and kw["schedule_policy"] == "lpm" and kw["trust_remote_code"] is True
    assert kw["page_size"] == DEFAULT_PAGE_SIZE  # SGLang's default is 1; ours unless given
    assert kw["stream_output"] is True and kw["skip_tokenizer_init"] is True
    assert parse(GUIDE + " --dp 2").engine_kwargs["dp_size"] == 2
    assert "error:" in fails(GUIDE + " --tpp 1")


def test_a_grammar_backend_keeps_sglangs_tokenizer_for_structured_outputs():
    plain = parse(GUIDE)
    assert plain.structured_outputs is False and "grammar_backend" not in plain.engine_kwargs
    config = parse(GUIDE + " --grammar-backend llguidance")
    assert config.engine_kwargs["grammar_backend"] == "llguidance"
    assert config.engine_kwargs["skip_tokenizer_init"] is False and config.structured_outputs is True
    off = parse(GUIDE + " --grammar-backend none")
    assert off.engine_kwargs["skip_tokenizer_init"] is True and off.structured_outputs is False
    assert "needs SGLang's tokenizer" in fails(GUIDE + " --grammar-backend xgrammar --skip-tokenizer-init")
