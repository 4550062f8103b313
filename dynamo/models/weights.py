"""Dequantized float32 weights from a GGUF file, through transformers' GGUF loader.

Journey: model preparation only (needs the ``cpu`` extra: torch + transformers). The engine
worker later loads ``model.safetensors`` next to the config and tokenizer files.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"


def weights_tooling_available() -> bool:
    """Whether torch and transformers can be imported (the ``cpu`` extra is installed)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def dequantize_gguf(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """Write ``out_dir/model.safetensors`` (float32) from ``gguf_path``; return transformers' config.

    The config is returned so the caller can check it against the one derived from the metadata.
    """
    import torch
    from transformers import AutoModelForCausalLM

    log.info("dequantizing %s to float32 (transformers)", gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The weights are plain float32 tensors now: drop the GGUF quantization state so that
    # save_pretrained writes an ordinary checkpoint.
    setattr(model, "hf_quantizer", None)  # noqa: B010 (torch's Module typing rejects plain attributes)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        setattr(model, "is_quantized", False)  # noqa: B010
    scratch = out_dir / ".save_pretrained"
    model.save_pretrained(str(scratch), safe_serialization=True)
    shutil.move(str(scratch / WEIGHTS_FILE), str(out_dir / WEIGHTS_FILE))
    (out_dir / WEIGHTS_FILE).chmod(0o644)
    config: dict[str, Any] = json.loads((scratch / "config.json").read_text())
    shutil.rmtree(scratch)
    return config


def check_config_agrees(ours: dict[str, Any], transformers_config: dict[str, Any]) -> None:
    """Raise ``ValueError`` if the config derived from metadata disagrees with transformers' on a
    field that shapes the weights (a wrong derivation would load garbage silently)."""
    keys = (
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_hidden_layers",
        "num_key_value_heads",
        "vocab_size",
        "tie_word_embeddings",
        "max_position_embeddings",
        "head_dim",
    )
    diffs = [k for k in keys if k in transformers_config and ours.get(k) != transformers_config[k]]
    theirs_theta = (transformers_config.get("rope_parameters") or {}).get("rope_theta")
    if theirs_theta is None:
        theirs_theta = transformers_config.get("rope_theta")
    if theirs_theta is not None and abs(float(theirs_theta) - float(ours["rope_theta"])) > 1e-3:
        diffs.append("rope_theta")
    if diffs:
        raise ValueError(f"config.json derived from GGUF metadata disagrees with transformers on {diffs}")
