"""What constrains a request's output: tool choice and structured output -> ``GuidedDecoding``.

Journey: parse -> **preprocess (here, called by ``dynamo.llm.preprocessor``)** -> route -> engine
(its own guided decoding) -> ... -> the frontend turns constrained tool output into ``tool_calls``.

``tool_plan`` decides how a chat request's tools are served: ``none`` (no tools, or
``tool_choice: "none"``), ``auto`` (the model may call; the card's tool-call parser reads its
text), ``required`` (the engine is constrained to a JSON array of ``{"name", "parameters"}``, one
entry per call) or ``named`` (constrained to the named tool's arguments object). The schemas are
the ones vLLM's server builds for the same requests. ``guided_from`` maps ``response_format`` and
vLLM's ``structured_outputs`` extension. Client schemas are checked here (400 naming the field), so
an engine never receives a schema that is not one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from dynamo.llm.errors import bad_request
from dynamo.llm.openai import ChatCompletionRequest, NamedToolChoice, _SamplingFields
from dynamo.llm.protocols import GuidedDecoding

ToolMode = Literal["none", "auto", "required", "named"]
_EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How a chat request's tools are served (see the module docstring)."""

    mode: ToolMode
    tools: list[dict[str, Any]] | None = None  # as the chat template and the parsers take them
    name: str | None = None  # the named tool
    guided: GuidedDecoding | None = None  # required / named: the engine's constraint


def tool_plan(req: ChatCompletionRequest) -> ToolPlan:
    """The plan for ``req``'s ``tools`` / ``tool_choice`` / ``parallel_tool_calls``."""
    choice = req.tool_choice
    if not req.tools:
        if choice not in (None, "none"):
            raise bad_request("'tool_choice' needs 'tools'.", "tool_choice")
        return ToolPlan("none")
    tools = [t.model_dump(exclude_none=True) for t in req.tools]
    params: dict[str, dict[str, Any] | None] = {}
    for i, tool in enumerate(req.tools):
        function = tool.function
        if function.name in params:
            raise bad_request(f"Tool name '{function.name}' is given twice.", f"tools[{i}].function.name")
        if function.parameters is not None:
            check_schema(function.parameters, f"tools[{i}].function.parameters")
        params[function.name] = function.parameters
    if choice == "none":
        # Tools stay in the prompt (the model may know of them) but are never called.
        return ToolPlan("none", tools)
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in params:
            raise bad_request(f"Tool '{name}' is not among 'tools'.", "tool_choice.function.name")
        return ToolPlan("named", tools, name, GuidedDecoding(json=params[name] or dict(_EMPTY_OBJECT)))
    if choice == "required":
        return ToolPlan(
            "required", tools, guided=GuidedDecoding(json=_calls_schema(params, req.parallel_tool_calls))
        )
    return ToolPlan("auto", tools)


def _calls_schema(params: dict[str, dict[str, Any] | None], parallel: bool | None) -> dict[str, Any]:
    """A JSON array of at least one ``{"name": <a tool>, "parameters": <its arguments>}``."""
    defs: dict[str, Any] = {}
    alternatives = []
    for name, schema in params.items():
        schema = dict(schema) if schema else dict(_EMPTY_OBJECT)
        for def_name, def_schema in (schema.pop("$defs", None) or {}).items():
            if defs.get(def_name, def_schema) != def_schema:
                raise bad_request(f"Tools define '$defs.{def_name}' differently.", "tools")
            defs[def_name] = def_schema
        alternatives.append(
            {
                "properties": {"name": {"type": "string", "enum": [name]}, "parameters": schema},
                "required": ["name", "parameters"],
            }
        )
    out: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": alternatives}}
    if parallel is False:
        out["maxItems"] = 1
    if defs:
        out["$defs"] = defs
    return out


def guided_from(req: _SamplingFields) -> GuidedDecoding | None:
    """The constraint of ``response_format`` or ``structured_outputs`` (parse checked that at most
    one of them constrains)."""
    rf = req.response_format
    if rf is not None and rf.type == "json_object":
        return GuidedDecoding(json_object=True)
    if rf is not None and rf.type == "json_schema" and rf.json_schema is not None:
        schema = rf.json_schema.schema_ or {}
        check_schema(schema, "response_format.json_schema.schema")
        return GuidedDecoding(json=schema)
    so = req.structured_outputs
    if so is None:
        return None
    if so.json_ is not None:
        raw = so.json_
        if isinstance(raw, str):
            try:
                schema = json.loads(raw)
            except ValueError:
                raise bad_request(
                    "'structured_outputs.json' is not valid JSON.", "structured_outputs.json"
                ) from None
            if not isinstance(schema, dict):
                raise bad_request(
                    "'structured_outputs.json' must be a JSON schema object.", "structured_outputs.json"
                )
        else:
            schema = raw
        check_schema(schema, "structured_outputs.json")
        return GuidedDecoding(json=schema)
    if so.json_object:
        return GuidedDecoding(json_object=True)
    if so.regex is not None:
        if not so.regex:
            raise bad_request("'structured_outputs.regex' must not be empty.", "structured_outputs.regex")
        return GuidedDecoding(regex=so.regex)
    if so.choice is not None:
        if any(not c for c in so.choice):
            raise bad_request(
                "'structured_outputs.choice' entries must not be empty.", "structured_outputs.choice"
            )
        return GuidedDecoding(choice=list(so.choice))
    if not so.grammar:
        raise bad_request("'structured_outputs.grammar' must not be empty.", "structured_outputs.grammar")
    return GuidedDecoding(grammar=so.grammar)


def check_schema(schema: dict[str, Any], param: str) -> None:
    """400 naming ``param`` unless ``schema`` is a valid JSON schema (of its declared draft)."""
    try:
        validator_for(schema).check_schema(schema)
    except RecursionError:  # the checker recurses per level; deep nesting is JSON, not a schema
        raise bad_request(f"'{param}' is nested too deeply to be a JSON schema served here.", param) from None
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise bad_request(
            f"'{param}' is not a valid JSON schema: {exc.message}"
            + (f" (at {where})" if where else "")
            + ".",
            param,
        ) from None
