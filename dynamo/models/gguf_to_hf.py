"""Hugging Face model files from a GGUF file's metadata, without torch.

Journey: model preparation, before anything serves. The files written here (``config.json``,
``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json``) are what the model
deployment card hashes and what the frontend's preprocessor and detokenizer load, so they must be
byte-for-byte reproducible: the same GGUF always gives the same files, with or without torch.

Supported: the ``llama`` architecture with a byte-level BPE (``gpt2``) tokenizer, as llama.cpp
writes it. The tokenizer is rebuilt from the vocabulary, merges, token types and pre-tokenizer name
(``tokenizer.ggml.pre``) the way llama.cpp splits text for that name.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFValueType
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from dynamo.llm.byte_level import byte_level_alphabet

_CONTROL = 3  # llama.cpp token type of special (control) tokens


class UnsupportedGGUF(ValueError):
    """The GGUF describes a model or tokenizer this converter does not handle."""


@dataclass(frozen=True)
class GGUFMetadata:
    """The metadata keys the converter reads (arrays only where needed)."""

    values: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> GGUFMetadata:
        """Read the key/value section and the tensor names (not the tensor data).

        A direct ``struct`` walk over the memory-mapped file: ``gguf.GGUFReader`` builds numpy views
        for every string of the vocabulary and takes seconds where this takes a fraction of one.
        """
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return cls(_read_metadata(buf))

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.values:
            raise UnsupportedGGUF(f"GGUF metadata has no '{key}'")
        return self.values[key]


_SCALARS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


def _read_metadata(buf: mmap.mmap) -> dict[str, Any]:
    if buf[:4] != b"GGUF":
        raise UnsupportedGGUF("not a GGUF file (bad magic)")
    version, tensor_count, kv_count = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        raise UnsupportedGGUF(f"GGUF version {version} is not supported (2 or 3)")
    pos = 24

    def string(at: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", buf, at)
        return buf[at + 8 : at + 8 + length].decode("utf-8", errors="replace"), at + 8 + length

    def value(kind: int, at: int) -> tuple[Any, int]:
        if kind == GGUFValueType.STRING:
            return string(at)
        if kind == GGUFValueType.ARRAY:
            item_kind, count = struct.unpack_from("<IQ", buf, at)
            at += 12
            if item_kind in _SCALARS:
                fmt = _SCALARS[GGUFValueType(item_kind)]
                items = list(struct.unpack_from(f"<{count}{fmt[1]}", buf, at))
                return items, at + count * struct.calcsize(fmt)
            items = []
            for _ in range(count):
                item, at = value(item_kind, at)
                items.append(item)
            return items, at
        scalar = _SCALARS.get(GGUFValueType(kind))
        if scalar is None:
            raise UnsupportedGGUF(f"GGUF metadata value type {kind} is not supported")
        return struct.unpack_from(scalar, buf, at)[0], at + struct.calcsize(scalar)

    values: dict[str, Any] = {}
    for _ in range(kv_count):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", buf, pos)
        values[key], pos = value(kind, pos + 4)
    names = []
    for _ in range(tensor_count):
        name, pos = string(pos)
        (dims,) = struct.unpack_from("<I", buf, pos)
        pos += 4 + 8 * dims + 4 + 8  # dims, ggml type, data offset
        names.append(name)
    values["__tensor_names__"] = names
    return values


def _float32_repr(value: float) -> float:
    """GGUF stores float32: 9.999999747378752e-06 is written back as the 1e-05 it was."""
    import numpy as np

    return float(str(np.float32(value)))


def hf_config(meta: GGUFMetadata) -> dict[str, Any]:
    """``config.json`` for a llama-architecture GGUF (float32 weights after dequantization)."""
    arch = meta.require("general.architecture")
    if arch != "llama":
        raise UnsupportedGGUF(f"GGUF architecture '{arch}' is not supported (only 'llama')")
    p = "llama."
    heads = int(meta.require(p + "attention.head_count"))
    hidden = int(meta.require(p + "embedding_length"))
    tokens = meta.require("tokenizer.ggml.tokens")
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": int(meta.require(p + "feed_forward_length")),
        "max_position_embeddings": int(meta.require(p + "context_length")),
        "mlp_bias": False,
        "num_attention_heads": heads,
        "num_hidden_layers": int(meta.require(p + "block_count")),
        "num_key_value_heads": int(meta.get(p + "attention.head_count_kv", heads)),
        "pretraining_tp": 1,
        "rms_norm_eps": _float32_repr(meta.require(p + "attention.layer_norm_rms_epsilon")),
        "rope_scaling": None,
        "rope_theta": _float32_repr(meta.get(p + "rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in meta.require("__tensor_names__"),
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": int(meta.get(p + "vocab_size", len(tokens))),
    }
    config.update(_special_ids(meta))
    return config


def _special_ids(meta: GGUFMetadata) -> dict[str, int]:
    ids = {}
    for ours, key in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("pad_token_id", "padding_token_id"),
    ):
        value = meta.get("tokenizer.ggml." + key)
        if value is not None:
            ids[ours] = int(value)
    return ids


def generation_config(meta: GGUFMetadata) -> dict[str, Any]:
    """``generation_config.json``: the special ids generation needs (eos ends a sequence)."""
    return _special_ids(meta)


def _pre_tokenizer(name: str | None) -> pre_tokenizers.PreTokenizer:
    """llama.cpp's split rules for ``tokenizer.ggml.pre``, as HF pre-tokenizers.

    ``smollm`` (and the StarCoder family) isolate every digit, then apply the GPT-2 regex;
    ``gpt2`` / unset is the GPT-2 regex alone.
    """
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name in ("smollm", "starcoder", "refact", "codeshell"):
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if name in (None, "gpt2", "default"):
        return byte_level
    raise UnsupportedGGUF(f"GGUF pre-tokenizer '{name}' is not supported (supported: smollm, gpt2)")


def build_tokenizer(meta: GGUFMetadata) -> Tokenizer:
    """The HF fast tokenizer the GGUF describes (byte-level BPE only)."""
    kind = meta.require("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedGGUF(f"GGUF tokenizer model '{kind}' is not supported (only byte-level BPE 'gpt2')")
    alphabet = byte_level_alphabet()
    spelling = set(alphabet.values())
    tokens: list[str] = meta.require("tokenizer.ggml.tokens")
    # llama.cpp may write a token in plain UTF-8 rather than the byte alphabet: respell it.
    vocab = {
        (t if set(t) <= spelling else "".join(alphabet[b] for b in t.encode())): i
        for i, t in enumerate(tokens)
    }
    merges = [tuple(m.split(" ", 1)) for m in meta.require("tokenizer.ggml.merges")]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type") or []
    special = [
        AddedToken(tokens[i], special=True, normalized=False)
        for i, kind_id in enumerate(types)
        if kind_id == _CONTROL and set(tokens[i]) <= spelling
    ]
    tokenizer.add_special_tokens(special)
    return tokenizer


def tokenizer_config(meta: GGUFMetadata, tokenizer: Tokenizer) -> dict[str, Any]:
    """``tokenizer_config.json``: special tokens, chat template and context length."""
    tokens: list[str] = meta.require("tokenizer.ggml.tokens")

    def token(key: str) -> str | None:
        value = meta.get("tokenizer.ggml." + key)
        return tokens[int(value)] if value is not None else None

    added = {
        str(token_id): {
            "content": tok.content,
            "lstrip": tok.lstrip,
            "normalized": tok.normalized,
            "rstrip": tok.rstrip,
            "single_word": tok.single_word,
            "special": tok.special,
        }
        for token_id, tok in sorted(tokenizer.get_added_tokens_decoder().items())
    }
    config: dict[str, Any] = {
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
        "added_tokens_decoder": added,
        "bos_token": token("bos_token_id"),
        "clean_up_tokenization_spaces": False,
        "eos_token": token("eos_token_id"),
        "model_max_length": int(meta.require(meta.require("general.architecture") + ".context_length")),
        "pad_token": token("padding_token_id"),
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": token("unknown_token_id"),
    }
    template = meta.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return config


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def hf_files(gguf_path: Path) -> dict[str, bytes]:
    """All four HF files for ``gguf_path``, by file name. Deterministic for a given GGUF."""
    meta = GGUFMetadata.read(gguf_path)
    tokenizer = build_tokenizer(meta)
    return {
        "config.json": _json_bytes(hf_config(meta)),
        "generation_config.json": _json_bytes(generation_config(meta)),
        "tokenizer.json": tokenizer.to_str(pretty=True).encode() + b"\n",
        "tokenizer_config.json": _json_bytes(tokenizer_config(meta, tokenizer)),
    }
