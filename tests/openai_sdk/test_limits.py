"""Limits and unknown fields through the official SDK, frontend + real vLLM worker (issue 11,
section 6): every limit the OpenAI API reference documents is a 400 in OpenAI's error shape naming
the field, and a field nobody serves is a 400 naming it, never ignored. (The same table runs
against the mocker in ``test_mocker_api.py``.)
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.openai_sdk.shapes import BASES, LIMITS, MODEL, assert_names, refusal

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]


@pytest.mark.parametrize(
    ("endpoint", "fields", "names"), [row[1:] for row in LIMITS], ids=[row[0] for row in LIMITS]
)
def test_limit_is_a_400_naming_the_field(
    sdk: openai.OpenAI, endpoint: str, fields: dict[str, Any], names: tuple[str, ...]
):
    err = refusal(sdk, endpoint, {"model": MODEL, **BASES[endpoint], **fields})
    assert err["type"] == "invalid_request_error"
    assert_names(err, *names)
