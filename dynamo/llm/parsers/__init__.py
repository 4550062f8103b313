"""Parsers of model text: tool calls and reasoning (registries by the reference's names).

Placeholder registries until the parser modules land; see /tmp/team/issue11-design.md.
"""

from __future__ import annotations

from typing import Any

TOOL_CALL_PARSERS: dict[str, Any] = {}
REASONING_PARSERS: dict[str, Any] = {}
