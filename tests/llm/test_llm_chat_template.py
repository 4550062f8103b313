"""Chat templates render as transformers' ``apply_chat_template`` does."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from dynamo.llm.chat_template import ChatTemplate, TemplateError
from dynamo.llm.errors import RequestError
from dynamo.llm.openai import parse_chat_request

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke about 日本 🙂"},
    ],
]


@pytest.fixture(scope="module")
def smollm2_template(smollm2_dir: Path) -> ChatTemplate:
    config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    template = ChatTemplate.from_tokenizer_config(config)
    assert template is not None
    return template


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_matches_transformers_apply_chat_template(
    smollm2_dir: Path,
    smollm2_template: ChatTemplate,
    conversation: list[dict[str, Any]],
    add_generation_prompt: bool,
) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(smollm2_dir))
    expected = hf.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    messages = smollm2_template.prepare_messages([dict(m) for m in conversation])
    assert smollm2_template.render(messages, add_generation_prompt=add_generation_prompt) == expected


def test_text_parts_are_flattened_for_string_templates(smollm2_template: ChatTemplate) -> None:
    assert smollm2_template.content_format == "string"
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    plain = [{"role": "user", "content": "a\nb"}]
    render = smollm2_template.render
    assert render(smollm2_template.prepare_messages(parts)) == render(
        smollm2_template.prepare_messages(plain)
    )


def test_parts_kept_when_the_template_iterates_content() -> None:
    source = (
        "{% for m in messages %}{% for part in m['content'] %}[{{ part['text'] }}]{% endfor %}{% endfor %}"
    )
    template = ChatTemplate(source)
    assert template.content_format == "openai"
    messages = template.prepare_messages(
        [{"role": "user", "content": "x"}, {"role": "user", "content": None}]
    )
    assert template.render(messages) == "[x]"


def test_environment_matches_hf_globals() -> None:
    source = (
        "{{ bos_token }}{% for m in messages %}{{ m['content'] | tojson }}{% endfor %}"
        "{{ strftime_now('%Y') | length }}{% if add_generation_prompt %}>{% endif %}"
        "{% generation %}g{% endgeneration %}{% for i in range(3) %}{% if i == 1 %}{% break %}{% endif %}"
        "{{ i }}{% endfor %}"
    )
    template = ChatTemplate(source, {"bos_token": {"content": "<s>"}, "eos_token": "</s>"})
    assert template.render([{"role": "user", "content": "é"}]) == '<s>"é"4>g0'


def test_raise_exception_becomes_400() -> None:
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(RequestError) as info:
        template.render([{"role": "user", "content": "x"}])
    assert info.value.status == 400 and info.value.param == "messages"
    assert "roles must alternate" in info.value.message


def test_sandbox_blocks_unsafe_access() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(RequestError):
        template.render([])


def test_broken_template_is_a_template_error() -> None:
    with pytest.raises(TemplateError):
        ChatTemplate("{% for %}")


def test_developer_role_mapped_to_system_unless_supported() -> None:
    plain = ChatTemplate("{% for m in messages %}{{ m['role'] }}{% endfor %}")
    assert plain.render(plain.prepare_messages([{"role": "developer", "content": "x"}])) == "system"
    aware = ChatTemplate("{% for m in messages %}{% if m['role'] == 'developer' %}D{% endif %}{% endfor %}")
    assert aware.render(aware.prepare_messages([{"role": "developer", "content": "x"}])) == "D"


def test_tools_and_tool_call_arguments_reach_the_template() -> None:
    source = (
        "{% for t in tools %}{{ t['function']['name'] }};{% endfor %}"
        "{% for m in messages %}{% for c in m.get('tool_calls', []) %}"
        "{{ c['function']['arguments']['city'] }}{% endfor %}{% endfor %}"
    )
    template = ChatTemplate(source)
    calls = [{"id": "1", "type": "function", "function": {"name": "w", "arguments": '{"city": "Paris"}'}}]
    messages = template.prepare_messages([{"role": "assistant", "content": None, "tool_calls": calls}])
    tools = [{"type": "function", "function": {"name": "weather"}}]
    assert template.render(messages, tools=tools) == "weather;Paris"


def test_continue_final_message(smollm2_template: ChatTemplate) -> None:
    messages = [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "1, 2,"}]
    text = smollm2_template.render(messages, add_generation_prompt=False, continue_final_message=True)
    assert text.endswith("<|im_start|>assistant\n1, 2,")


def test_named_templates_pick_tool_use_when_tools_given() -> None:
    config = {"chat_template": [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]}
    assert ChatTemplate.from_tokenizer_config(config) is not None
    assert ChatTemplate.from_tokenizer_config(config).render([]) == "D"  # type: ignore[union-attr]
    assert ChatTemplate.from_tokenizer_config(config, tools=True).render([]) == "T"  # type: ignore[union-attr]
    assert ChatTemplate.from_tokenizer_config({}) is None
    assert ChatTemplate.from_tokenizer_config({"chat_template": "C"}, "J").render([]) == "J"  # type: ignore[union-attr]


def test_request_messages_render_like_plain_dicts(smollm2_template: ChatTemplate) -> None:
    body = json.dumps({"model": "m", "messages": CONVERSATIONS[2]}).encode()
    req = parse_chat_request(body)
    from_request = smollm2_template.prepare_messages([m.model_dump(exclude_none=True) for m in req.messages])
    from_dicts = smollm2_template.prepare_messages([dict(m) for m in CONVERSATIONS[2]])
    assert smollm2_template.render(from_request) == smollm2_template.render(from_dicts)
