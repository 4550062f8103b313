"""``dynamo.vllm.model_path``: the ``--model`` a worker checks before importing vLLM."""

from __future__ import annotations

from pathlib import Path

from dynamo.vllm.model_path import is_missing_local_path, model_argument


def test_the_last_model_flag_wins_in_either_spelling() -> None:
    assert model_argument(["--model", "a", "--max-model-len", "8"]) == "a"
    assert model_argument(["--model=/x/y"]) == "/x/y"
    assert model_argument(["--model", "a", "--model=b"]) == "b"
    assert model_argument(["--served-model-name", "m"]) is None
    assert model_argument(["--model"]) is None  # argparse says what is wrong with that


def test_only_paths_that_are_not_there_are_missing(tmp_path: Path) -> None:
    assert is_missing_local_path(str(tmp_path / "nope"))
    assert not is_missing_local_path(str(tmp_path))
    assert not is_missing_local_path("HuggingFaceTB/SmolLM2-135M-Instruct")  # a hub id: vLLM's to resolve
    assert is_missing_local_path("./surely-not-here-42")
