"""The limits table of ``shapes.LIMITS`` against frontend + mocker (issue 11, section 6): the
frontend enforces them before any engine is involved, so the mocker suffices."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.openai_sdk.shapes import BASES, LIMITS, MOCK_MODEL, assert_names, refusal

pytestmark = [pytest.mark.timeout(120)]


@pytest.mark.parametrize(
    ("endpoint", "fields", "names"), [row[1:] for row in LIMITS], ids=[row[0] for row in LIMITS]
)
def test_limit_is_a_400_naming_the_field(
    mock_sdk: openai.OpenAI, endpoint: str, fields: dict[str, Any], names: tuple[str, ...]
):
    err = refusal(mock_sdk, endpoint, {"model": MOCK_MODEL, **BASES[endpoint], **fields})
    assert err["type"] == "invalid_request_error"
    assert_names(err, *names)
