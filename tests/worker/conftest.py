"""Fixtures: SmolLM2 prepared tokenizer-only (no torch), as in tests/llm."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamo.models import prepare_model


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return prepare_model("smollm2", tokenizer_only=True, progress=False)
