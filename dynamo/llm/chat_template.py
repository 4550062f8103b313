"""Rendering a model's Jinja chat template the way Hugging Face ``apply_chat_template`` does.

Journey: HTTP -> **preprocess (messages -> prompt text here)** -> tokenize -> route -> engine.

Same environment as transformers: a sandbox with ``trim_blocks``/``lstrip_blocks``, loop controls,
a ``tojson`` that keeps non-ASCII, and the globals ``raise_exception`` and ``strftime_now``; the
special tokens (``bos_token``, ``eos_token``, ...) are passed as variables. Templates are compiled
once per template text and shared.

Message content given as a list of text parts is flattened to one string joined by newlines, unless
the template itself iterates over ``message['content']`` (then it gets the parts), as vLLM does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dynamo.llm.errors import RequestError, bad_request

ContentFormat = Literal["string", "openai"]


class TemplateError(ValueError):
    """The chat template itself is broken (does not compile)."""


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (assistant-mask markers): render the body as is."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=64)
def _compile(source: str) -> tuple[jinja2.Template, ContentFormat]:
    env = _environment()
    try:
        return env.from_string(source), _content_format(env.parse(source))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"chat template does not compile: {exc}") from None


def _content_format(ast: jinja2.nodes.Template) -> ContentFormat:
    """``openai`` if the template loops over a message's ``content`` (it wants the parts list)."""
    for loop in ast.find_all(jinja2.nodes.For):
        node = loop.iter
        while isinstance(node, jinja2.nodes.Filter | jinja2.nodes.Test) and node.node is not None:
            node = node.node
        if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Const):
            if node.arg.value == "content":
                return "openai"
        if isinstance(node, jinja2.nodes.Getattr) and node.attr == "content":
            return "openai"
        if isinstance(node, jinja2.nodes.Name) and node.name == "content":
            return "openai"
    return "string"


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # older tokenizer_config.json: {"content": "<s>", ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


class ChatTemplate:
    """A compiled chat template plus the variables a model's tokenizer config gives it."""

    def __init__(self, source: str, special_tokens: dict[str, Any] | None = None) -> None:
        self.source = source
        self._template, self.content_format = _compile(source)
        self.supports_developer_role = "'developer'" in source or '"developer"' in source
        self._variables = {
            name: text
            for name, value in (special_tokens or {}).items()
            if (text := _token_text(value)) is not None
        }

    @classmethod
    def from_tokenizer_config(
        cls, tokenizer_config: dict[str, Any], jinja_file: str | None = None, *, tools: bool = False
    ) -> ChatTemplate | None:
        """The template from ``chat_template.jinja`` (preferred) or ``tokenizer_config.json``.

        A config may hold named templates (a list of ``{"name", "template"}``): ``tool_use`` is
        picked when ``tools`` is true and present, else ``default``.
        """
        source: Any = jinja_file or tokenizer_config.get("chat_template")
        if isinstance(source, list):
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = (named.get("tool_use") if tools else None) or named.get("default")
        if not isinstance(source, str) or not source:
            return None
        specials = {
            key: tokenizer_config.get(key) for key in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        return cls(source, specials)

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """The prompt text. Template failures (``raise_exception``, bad input) -> ``RequestError`` 400."""
        variables: dict[str, Any] = dict(self._variables)
        if extra:
            variables.update(extra)
        variables.update(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt)
        try:
            text = self._template.render(variables)
        except jinja2.TemplateError as exc:
            raise bad_request(f"The chat template rejected the messages: {exc}", "messages") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise bad_request(f"The chat template could not render the messages: {exc}", "messages") from None
        if continue_final_message:
            text = _cut_after_final_message(text, messages)
        return text

    def prepare_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """OpenAI messages -> what HF templates expect (in place on fresh dicts).

        Flattens text parts unless the template wants them, maps ``developer`` to ``system`` when the
        template does not know that role, and parses tool-call arguments from JSON strings to dicts.
        """
        for message in messages:
            content = message.get("content")
            if self.content_format == "string":
                if content is None:
                    message["content"] = ""
                elif isinstance(content, list):
                    message["content"] = "\n".join(
                        part["text"] for part in content if part.get("text") is not None
                    )
            elif content is None:
                message["content"] = []
            elif isinstance(content, str):
                message["content"] = [{"type": "text", "text": content}]
            if message.get("role") == "developer" and not self.supports_developer_role:
                message["role"] = "system"
            for call in message.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    try:
                        function["arguments"] = json.loads(function["arguments"])
                    except ValueError:
                        pass  # leave unparsable arguments as the string the client sent
        return messages


def _cut_after_final_message(text: str, messages: list[dict[str, Any]]) -> str:
    """Continue the last message: drop whatever the template appended after its content."""
    content = messages[-1].get("content") if messages else None
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("text")]
        content = texts[-1] if texts else None
    if not content or not isinstance(content, str):
        return text
    at = text.rfind(content)
    if at < 0:
        raise RequestError(
            400, "The chat template drops the final message, so it cannot be continued.", param="messages"
        )
    return text[: at + len(content)]
