"""Tool-calling request shapes against frontend + mocker (no engine needed; issue 11, section 1).

The mocker emits random tokens, so these check what the frontend owns: ``none`` and ``auto`` are
served, the history's tool call and tool result reach the chat template, ``--custom-jinja-template``
replaces the model's template, and ``required`` / a named function -- which need guided decoding
the mocker does not have -- are a 400 naming ``tool_choice`` rather than a silent plain answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import openai
import pytest
from tokenizers import Tokenizer

from tests.openai_sdk.conftest import OURS_PARSERS, MockGraph
from tests.openai_sdk.shapes import (
    ASK_WEATHER,
    HI,
    MOCK_MODEL,
    NAMED,
    TOOL_HISTORY,
    TOOLS,
    assert_names,
    chat_summary,
    create,
    refusal,
    tool_call_problems,
    usage_of,
)
from tests.support.graph import Frontend, discovery_env, start_mocker
from tests.support.procs import wait_until

pytestmark = [pytest.mark.timeout(120)]
MODES = ["plain", "stream"]
TEMPLATE = (  # no newlines: trim_blocks / lstrip_blocks cannot change it
    "{% for m in messages %}[{{ m.role }}] {{ m.content }} {% endfor %}"
    "{% if tools %}[tools]{% for t in tools %} {{ t.function.name }}{% endfor %} {% endif %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def body(mode: str, **fields: Any) -> dict[str, Any]:
    out = {"model": MOCK_MODEL, "max_tokens": 8, **fields}
    if mode == "stream":
        out.update(stream=True, stream_options={"include_usage": True})
    return out


@pytest.mark.parametrize("mode", MODES)
def test_tool_choice_none_is_served_without_calls(mock_sdk: openai.OpenAI, mode: str):
    answer = create(mock_sdk, "chat", body(mode, messages=ASK_WEATHER, tools=TOOLS, tool_choice="none"))
    choice = chat_summary(answer)[0]
    assert choice["tool_calls"] == [] and choice["content"]
    assert usage_of(answer)["completion_tokens"] == 8


@pytest.mark.parametrize("mode", MODES)
def test_tool_choice_auto_is_served(mock_sdk: openai.OpenAI, mode: str):
    choice = chat_summary(
        create(mock_sdk, "chat", body(mode, messages=ASK_WEATHER, tools=TOOLS, tool_choice="auto"))
    )[0]
    assert choice["content"] or choice["tool_calls"]
    assert tool_call_problems(choice["tool_calls"], TOOLS) == []


@pytest.mark.parametrize("mode", MODES)
def test_tool_history_reaches_the_template(mock_sdk: openai.OpenAI, mode: str):
    with_history = usage_of(create(mock_sdk, "chat", body(mode, messages=TOOL_HISTORY, tools=TOOLS)))
    question = usage_of(create(mock_sdk, "chat", body(mode, messages=ASK_WEATHER, tools=TOOLS)))
    assert with_history["prompt_tokens"] >= question["prompt_tokens"] + 50


@pytest.mark.parametrize("choice", ["required", "named"])
@pytest.mark.parametrize("mode", MODES)
def test_forced_tool_choice_needs_guided_decoding_the_mocker_lacks(
    mock_sdk: openai.OpenAI, choice: str, mode: str
):
    tool_choice = NAMED if choice == "named" else "required"
    err = refusal(mock_sdk, "chat", body(mode, messages=ASK_WEATHER, tools=TOOLS, tool_choice=tool_choice))
    assert_names(err, "tool_choice")


@pytest.fixture(scope="module")
def templated(log_dir: Path, smollm2_tokenizer_dir: Path, tmp_path_factory) -> Iterator[MockGraph]:
    """A mocker started with ``--custom-jinja-template``."""
    folder = tmp_path_factory.mktemp("sdk-template")
    (folder / "template.jinja").write_text(TEMPLATE)
    env = discovery_env("file")
    env["DYN_FILE_DISCOVERY_DIR"] = str(folder / "discovery")
    worker = start_mocker(
        log_dir, env, smollm2_tokenizer_dir, "sdk-mocker-template", "--model-name", MOCK_MODEL,
        "--speedup-ratio", "50", "--custom-jinja-template", str(folder / "template.jinja"), *OURS_PARSERS,
    )  # fmt: skip
    frontend = None
    try:
        frontend = Frontend(log_dir, env, name="sdk-mock-template-frontend")
        wait_until(lambda: bool(frontend.health().get("instances")), 30, "the frontend seeing the mocker")
        yield MockGraph(frontend, worker, env)
    finally:
        if frontend is not None:
            frontend.stop()
        worker.stop()


@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no tools", "tools"])
def test_custom_jinja_template_replaces_the_models(templated: MockGraph, smollm2_tokenizer_dir: Path, tools):
    client = openai.OpenAI(base_url=templated.base_url, api_key="none", max_retries=0)
    fields: dict[str, Any] = {"messages": HI} if tools is None else {"messages": HI, "tools": tools}
    answer = create(client, "chat", body("plain", **fields))
    rendered = jinja2.Template(TEMPLATE).render(messages=HI, tools=tools, add_generation_prompt=True)
    tok = Tokenizer.from_file(str(smollm2_tokenizer_dir / "tokenizer.json"))
    assert answer.usage.prompt_tokens == len(tok.encode(rendered, add_special_tokens=False).ids)
