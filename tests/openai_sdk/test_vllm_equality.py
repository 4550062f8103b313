"""Our answers equal vLLM's own server's, token for token (issue 11, section 4).

Greedy float32 output with ``logprobs``, ``echo`` (with prompt logprobs and ``max_tokens: 0``), a
list of prompts, and seeded ``n > 1`` (vLLM refuses ``n > 1`` with greedy sampling; with a seed it
gives choice i the seed + i, which our frontend's fan-out must reproduce). The reference answers
come from ``reference.REFERENCE_REQUESTS`` sent to vLLM's server on the same engine flags; each is
sent here through our frontend with the SDK, one at a time as there.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.openai_sdk.reference import REFERENCE_REQUESTS, assert_same, comparable
from tests.openai_sdk.shapes import MODEL, create

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]


@pytest.mark.parametrize("name", list(REFERENCE_REQUESTS))
def test_same_output_as_vllms_own_server(sdk: openai.OpenAI, reference: dict[str, Any], name: str):
    endpoint, body = REFERENCE_REQUESTS[name]
    ours = create(sdk, endpoint, {"model": MODEL, **body})
    assert_same(comparable(endpoint, ours), comparable(endpoint, reference[name]))
