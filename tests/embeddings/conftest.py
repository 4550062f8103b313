"""Fixtures for the embeddings tests: ``smollm2_dir`` (the real model, shared with tests/vllm)."""

from tests.vllm.conftest import smollm2_dir  # noqa: F401 (a fixture, used by name)
