"""Model deployment card: stable checksum over what defines the model, file verification."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dynamo.llm.model_card import CardFileError, ModelDeploymentCard, RuntimeFacts


@pytest.fixture
def model_copy(smollm2_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "SmolLM2-copy"
    shutil.copytree(smollm2_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    return folder


def test_card_from_prepared_folder(smollm2_card: ModelDeploymentCard, smollm2_dir: Path) -> None:
    card = smollm2_card
    assert card.display_name == "SmolLM2-135M-Instruct"
    assert card.source_path == str(smollm2_dir)
    assert card.model_type == ["chat", "completions"] and card.model_input == "tokens"
    assert card.context_length == 8192
    assert (card.eos_token_ids, card.bos_token_id) == ([2], 1)
    assert set(card.files) == {
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "generation_config.json",
    }
    assert len(card.checksum) == 64


def test_checksum_is_stable_and_ignores_role_and_capacity(smollm2_dir: Path) -> None:
    a = ModelDeploymentCard.from_local_path(smollm2_dir)
    b = ModelDeploymentCard.from_local_path(
        smollm2_dir,
        migration_limit=3,
        runtime=RuntimeFacts(
            total_kv_blocks=999, max_num_seqs=8, disaggregation_role="prefill", data_parallel_size=2
        ),
    )
    assert a.checksum == b.checksum == a.compute_checksum()


@pytest.mark.parametrize(
    "kwargs", [{"context_length": 4096}, {"kv_cache_block_size": 32}, {"served_model_name": "other-name"}]
)
def test_checksum_changes_with_what_defines_the_model(smollm2_dir: Path, kwargs: dict[str, object]) -> None:
    base = ModelDeploymentCard.from_local_path(smollm2_dir)
    assert ModelDeploymentCard.from_local_path(smollm2_dir, **kwargs).checksum != base.checksum  # type: ignore[arg-type]


def test_checksum_changes_with_a_file(model_copy: Path) -> None:
    before = ModelDeploymentCard.from_local_path(model_copy, served_model_name="m")
    config = json.loads((model_copy / "tokenizer_config.json").read_text())
    config["chat_template"] += " "
    (model_copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert ModelDeploymentCard.from_local_path(model_copy, served_model_name="m").checksum != before.checksum


def test_json_round_trip_and_tamper_check(smollm2_card: ModelDeploymentCard) -> None:
    data = smollm2_card.to_json()
    assert ModelDeploymentCard.from_json(data) == smollm2_card
    tampered = json.loads(data)
    tampered["context_length"] = 100
    with pytest.raises(ValueError, match="checksum"):
        ModelDeploymentCard.from_json(json.dumps(tampered))
    with pytest.raises(ValueError, match="malformed"):
        ModelDeploymentCard.from_json(b"{}")
    newer = json.loads(data)
    newer["some_future_field"] = 1  # cards from newer workers still decode
    assert ModelDeploymentCard.from_json(json.dumps(newer)) == smollm2_card


def test_read_files_verifies_hashes(model_copy: Path) -> None:
    card = ModelDeploymentCard.from_local_path(model_copy)
    files = card.read_files()
    assert set(files) == set(card.files)
    card.verify_files(files)
    (model_copy / "config.json").write_text("{}")
    with pytest.raises(CardFileError):
        card.read_files()
    assert card.try_read_local_files() is None
    (model_copy / "config.json").unlink()
    with pytest.raises(CardFileError, match="missing"):
        card.read_files()
    with pytest.raises(CardFileError, match="missing"):
        card.verify_files({})


def test_context_length_sources(model_copy: Path) -> None:
    assert ModelDeploymentCard.from_local_path(model_copy, context_length=1024).context_length == 1024
    config = json.loads((model_copy / "config.json").read_text())
    del config["max_position_embeddings"]
    (model_copy / "config.json").write_text(json.dumps(config))
    assert ModelDeploymentCard.from_local_path(model_copy).context_length == 8192  # model_max_length
    tok_config = json.loads((model_copy / "tokenizer_config.json").read_text())
    tok_config["model_max_length"] = 1e30  # transformers' "unset"
    (model_copy / "tokenizer_config.json").write_text(json.dumps(tok_config))
    with pytest.raises(ValueError, match="context length"):
        ModelDeploymentCard.from_local_path(model_copy)


def test_eos_ids_from_generation_and_model_config(model_copy: Path) -> None:
    (model_copy / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [2, 0], "bos_token_id": 1})
    )
    assert ModelDeploymentCard.from_local_path(model_copy).eos_token_ids == [2, 0]


def test_chat_template_jinja_file_is_part_of_the_card(model_copy: Path) -> None:
    (model_copy / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    card = ModelDeploymentCard.from_local_path(model_copy)
    assert "chat_template.jinja" in card.files


def test_not_a_folder() -> None:
    with pytest.raises(ValueError, match="not a folder"):
        ModelDeploymentCard.from_local_path("/nonexistent/model")
