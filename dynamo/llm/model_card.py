"""Model deployment card: what a worker publishes about the model it serves.

Journey: a worker builds the card at start-up (``from_local_path``) and registers it in discovery
(``v1/mdc/...``); the frontend watches those keys, checks the ``checksum`` against the cards already
serving the same name (a model cannot change under a running name), gets the tokenizer/template
files (``read_files`` from a local folder with matching hashes, else fetched from the worker) and
builds the preprocessor from them -> HTTP requests for that name can be preprocessed and routed.

The checksum covers what defines the model for a client: the files' hashes, the context length,
the KV block size (the router hashes blocks of that size) and the served name. It leaves out a
worker's role, capacity and migration limit, which differ between instances of one model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import msgspec

log = logging.getLogger(__name__)

# Files the frontend needs to preprocess and detokenize, in the order they are looked for.
CARD_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "config.json",
    "generation_config.json",
    "chat_template.jinja",
)
# config.json keys that may hold the context length, most specific first (as vLLM looks them up).
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")
_UNSET_MAX_LENGTH = 10**9  # transformers writes ~1e30 for "no limit" in model_max_length


class CardFileError(ValueError):
    """A card's file is missing or its content does not match the hash in the card."""


class FileRef(msgspec.Struct, frozen=True):
    """A file the card refers to, by content hash."""

    sha256: str
    size: int


class RuntimeFacts(msgspec.Struct, omit_defaults=True):
    """What one worker instance brings (informational; not part of the checksum)."""

    total_kv_blocks: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    data_parallel_size: int = 1
    disaggregation_role: str | None = None  # "prefill" | "decode" | None (aggregated)
    bootstrap_address: str | None = None  # disaggregation: where a decode worker reaches this one


class EngineFeatures(msgspec.Struct, omit_defaults=True, frozen=True):
    """What the serving engine can do beyond plain sampling; the frontend refuses (400, naming the
    field) a request that needs a feature its model's engine lacks. Declared by each engine class."""

    structured_outputs: bool = False  # guided decoding: JSON schema/object, regex, choice, grammar
    logit_bias: bool = False
    prompt_logprobs: bool = False  # logprobs of the prompt's tokens (completions ``echo`` + ``logprobs``)


class ModelDeploymentCard(msgspec.Struct, kw_only=True):
    """The card itself; JSON in discovery (``to_json`` / ``from_json``)."""

    display_name: str
    source_path: str
    context_length: int
    model_type: list[str] = msgspec.field(default_factory=lambda: ["chat", "completions"])
    model_input: str = "tokens"
    kv_cache_block_size: int = 16
    migration_limit: int = 0
    eos_token_ids: list[int] = []
    bos_token_id: int | None = None
    files: dict[str, FileRef] = {}
    # Where a file is read from when not ``source_path/<name>`` (``--custom-jinja-template``).
    file_paths: dict[str, str] = {}
    # The worker's ``--dyn-tool-call-parser`` / ``--dyn-reasoning-parser``: how the frontend turns
    # this model's text into ``tool_calls`` and ``reasoning_content``.
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    features: EngineFeatures = msgspec.field(default_factory=EngineFeatures)
    runtime: RuntimeFacts = msgspec.field(default_factory=RuntimeFacts)
    checksum: str = ""

    @classmethod
    def from_local_path(
        cls,
        path: str | Path,
        served_model_name: str | None = None,
        context_length: int | None = None,
        kv_cache_block_size: int = 16,
        migration_limit: int = 0,
        runtime: RuntimeFacts | None = None,
        *,
        custom_chat_template: str | Path | None = None,
        tool_call_parser: str | None = None,
        reasoning_parser: str | None = None,
        features: EngineFeatures | None = None,
        model_type: list[str] | None = None,
    ) -> ModelDeploymentCard:
        """Build the card for a local HF folder (or, if ``huggingface_hub`` is installed, a hub name).

        ``display_name`` is ``served_model_name``, else the hub name, else the folder's name.
        ``custom_chat_template``: a Jinja file served as the card's ``chat_template.jinja`` instead of
        the model's own template (``ValueError`` if it cannot be read). ``model_type``: the endpoints
        the worker serves the model on (``["embeddings"]`` for an embedding worker); by default
        ``chat`` and ``completions``, or only ``completions`` when the model has no chat template.
        """
        folder, hub_name = _resolve(path)
        config = _read_json(folder / "config.json")
        generation = _read_json(folder / "generation_config.json")
        tok_config = _read_json(folder / "tokenizer_config.json")
        if context_length is None:
            context_length = _context_length(config, tok_config)
            if context_length is None:
                raise ValueError(f"cannot tell the context length of {folder}: pass context_length")
        if context_length <= 0 or kv_cache_block_size <= 0:
            raise ValueError("context_length and kv_cache_block_size must be positive")
        files = {
            name: FileRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            for name in CARD_FILES
            if (data := _read_bytes(folder / name)) is not None
        }
        if "tokenizer.json" not in files:
            raise ValueError(f"{folder} has no tokenizer.json (only HF fast tokenizers are supported)")
        file_paths: dict[str, str] = {}
        if custom_chat_template is not None:
            template_path = Path(custom_chat_template).expanduser().absolute()
            data = _read_bytes(template_path)
            if data is None:
                raise ValueError(f"custom chat template {template_path} cannot be read")
            files["chat_template.jinja"] = FileRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            file_paths["chat_template.jinja"] = str(template_path)
        has_template = bool(tok_config.get("chat_template")) or "chat_template.jinja" in files
        card = cls(
            display_name=served_model_name or hub_name or folder.name,
            model_type=model_type or (["chat", "completions"] if has_template else ["completions"]),
            source_path=str(folder),
            context_length=context_length,
            kv_cache_block_size=kv_cache_block_size,
            migration_limit=migration_limit,
            eos_token_ids=_eos_token_ids(generation, config),
            bos_token_id=_first_int(generation.get("bos_token_id"), config.get("bos_token_id")),
            files=files,
            file_paths=file_paths,
            tool_call_parser=tool_call_parser,
            reasoning_parser=reasoning_parser,
            features=features or EngineFeatures(),
            runtime=runtime or RuntimeFacts(),
        )
        card.checksum = card.compute_checksum()
        return card

    def compute_checksum(self) -> str:
        """sha256 over what defines the model for a client: files' hashes, context length, block
        size, name, and the parsers that shape its responses."""
        defining = {
            "display_name": self.display_name,
            "tool_call_parser": self.tool_call_parser,
            "reasoning_parser": self.reasoning_parser,
            "model_input": self.model_input,
            "context_length": self.context_length,
            "kv_cache_block_size": self.kv_cache_block_size,
            "files": {name: ref.sha256 for name, ref in sorted(self.files.items())},
        }
        return hashlib.sha256(
            json.dumps(defining, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> ModelDeploymentCard:
        """Decode a card; ``ValueError`` if it is malformed or its checksum does not match."""
        try:
            card = msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError as exc:
            raise ValueError(f"malformed model deployment card: {exc}") from None
        if card.checksum != card.compute_checksum():
            raise ValueError(f"model deployment card for '{card.display_name}' has a wrong checksum")
        return card

    def read_files(self) -> dict[str, bytes]:
        """The card's files from ``source_path``; ``CardFileError`` if missing or changed."""
        folder = Path(self.source_path)
        files: dict[str, bytes] = {}
        for name in self.files:
            path = Path(self.file_paths[name]) if name in self.file_paths else folder / name
            data = _read_bytes(path)
            if data is None:
                raise CardFileError(f"{path} is missing")
            files[name] = data
        self.verify_files(files)
        return files

    def try_read_local_files(self) -> dict[str, bytes] | None:
        """``read_files()``, or ``None`` when this machine has no matching copy (fetch them instead)."""
        try:
            return self.read_files()
        except CardFileError as exc:
            log.debug("local files for %s unusable: %s", self.display_name, exc)
            return None

    def verify_files(self, files: dict[str, bytes]) -> None:
        """Check that ``files`` holds every file of the card with the hash the card names."""
        for name, ref in self.files.items():
            data = files.get(name)
            if data is None:
                raise CardFileError(f"file {name} of model '{self.display_name}' is missing")
            if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
                raise CardFileError(f"file {name} of model '{self.display_name}' does not match its hash")


def _resolve(path: str | Path) -> tuple[Path, str | None]:
    local = Path(path).expanduser()
    if local.is_dir():
        return local.absolute(), None
    name = str(path)
    if local.exists() or name.count("/") != 1 or name.startswith((".", "/")):
        raise ValueError(f"model path {name} is not a folder")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(
            f"{name} is not a local folder, and huggingface_hub is not installed to fetch it"
        ) from None
    log.info("fetching the card files of %s from the hub", name)
    folder = snapshot_download(name, allow_patterns=list(CARD_FILES))
    return Path(folder), name


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _read_json(path: Path) -> dict[str, Any]:
    data = _read_bytes(path)
    if data is None:
        return {}
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    return value if isinstance(value, dict) else {}


def _context_length(config: dict[str, Any], tok_config: dict[str, Any]) -> int | None:
    sections = [config, config.get("text_config") or {}]
    for section in sections:
        for key in _CONTEXT_KEYS:
            value = section.get(key)
            if isinstance(value, int) and value > 0:
                return value
    value = tok_config.get("model_max_length")
    if isinstance(value, int | float) and 0 < value < _UNSET_MAX_LENGTH:
        return int(value)
    return None


def _as_ids(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _eos_token_ids(generation: dict[str, Any], config: dict[str, Any]) -> list[int]:
    ids = _as_ids(generation.get("eos_token_id")) + _as_ids(config.get("eos_token_id"))
    return list(dict.fromkeys(ids))


def _first_int(*values: Any) -> int | None:
    for value in values:
        if ids := _as_ids(value):
            return ids[0]
    return None
