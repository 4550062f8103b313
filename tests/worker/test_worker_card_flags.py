"""The worker flags that shape what the frontend does with a model: --dyn-tool-call-parser,
--dyn-reasoning-parser, --custom-jinja-template (and their DYN_* env), checked at start-up."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.worker.args import WorkerArgs, add_worker_args, worker_args_from


def parse(argv: list[str]) -> WorkerArgs:
    parser = argparse.ArgumentParser()
    add_worker_args(parser)
    return worker_args_from(parser.parse_args(argv))


def test_flags_reach_the_worker_args(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages[0].content }}")
    args = parse(
        [
            "--dyn-tool-call-parser",
            "hermes",
            "--dyn-reasoning-parser",
            "deepseek_r1",
            "--custom-jinja-template",
            str(template),
        ]
    )
    assert (args.tool_call_parser, args.reasoning_parser, args.custom_jinja_template) == (
        "hermes",
        "deepseek_r1",
        str(template),
    )
    assert parse([]).tool_call_parser is None


def test_env_names_are_the_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_TOOL_CALL_PARSER", "pythonic")
    monkeypatch.setenv("DYN_REASONING_PARSER", "qwen3")
    args = parse([])
    assert (args.tool_call_parser, args.reasoning_parser) == ("pythonic", "qwen3")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dyn-tool-call-parser", "nope"], "hermes"),  # the error lists the known names
        (["--dyn-reasoning-parser", "nope"], "deepseek_r1"),
        (["--custom-jinja-template", "/no/such/file.jinja"], "no such file"),
    ],
)
def test_bad_values_are_refused_at_start_up(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(argv)


def test_the_card_carries_the_parsers_and_serves_the_custom_template(
    smollm2_dir: Path, tmp_path: Path
) -> None:
    template = tmp_path / "custom.jinja"
    template.write_text("custom {{ messages[0].content }}")
    plain = ModelDeploymentCard.from_local_path(smollm2_dir)
    card = ModelDeploymentCard.from_local_path(
        smollm2_dir, custom_chat_template=template, tool_call_parser="hermes"
    )
    assert card.tool_call_parser == "hermes"
    assert card.read_files()["chat_template.jinja"] == template.read_bytes()
    assert card.checksum != plain.checksum  # a different template or parser is a different model for clients
    decoded = ModelDeploymentCard.from_json(card.to_json())
    assert decoded.file_paths == {"chat_template.jinja": str(template)}
    template.write_text("changed")  # a template edited under a running card is noticed
    with pytest.raises(ValueError, match="does not match"):
        card.read_files()


@pytest.mark.parametrize("var", ["DYN_PREFILL_TIMEOUT", "DYN_KV_TRANSFER_TIMEOUT"])
@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_a_bad_disagg_timeout_stops_the_worker_at_start_up(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    """Read with the flags, before any engine loads: a worker never runs on a silently changed timeout."""
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        parse([])


def test_the_disagg_timeouts_reach_the_worker_args(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_PREFILL_TIMEOUT", "12.5")
    monkeypatch.setenv("DYN_KV_TRANSFER_TIMEOUT", "7")
    timeouts = parse([]).disagg_timeouts
    assert (timeouts.prefill_s, timeouts.transfer_s) == (12.5, 7.0)
