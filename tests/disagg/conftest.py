"""Fixtures for the disaggregation tests: the prepared SmolLM2 folder, shared with the vLLM tests."""

from tests.vllm.conftest import smollm2_dir

__all__ = ["smollm2_dir"]
