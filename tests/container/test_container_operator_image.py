"""container/: the operator image built for real with container/build.sh (the buildah backend, on the
local Debian base from container/local-base.sh) and run by container/smoke.sh, as CI does; smoke.sh
must also reject images a pod could not run. Skipped only where the tools are missing (not root, or no
buildah/debootstrap: `scripts/install.sh --containers` installs them).

Time (measured on 2 shared cores): ~20 s when only dynamo/ changed since the last build, ~45 s when
the dependency list changed, 1 min 45 s on a machine with nothing cached (debootstrap included);
each smoke run takes a few seconds.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "container" / "build.sh"
SMOKE = ROOT / "container" / "smoke.sh"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
OPERATOR = f"dynamo:{VERSION}-operator"
TOOLS = ("buildah", "debootstrap", "unshare", "nsenter", "curl")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (chroot isolation, namespaces)"
    absent = [t for t in TOOLS if shutil.which(t) is None]
    return f"{', '.join(absent)} not installed (scripts/install.sh --containers)" if absent else None


needs_tools = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def buildah_containers() -> set[str]:
    return set(run(["buildah", "containers", "-q"], 30).stdout.split())


def storage_mounts() -> list[str]:
    return [
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "containers/storage" in line
    ]


def test_buildah_dry_run_command() -> None:
    """The daemonless command: chroot isolation, host network, cached layers, the .dockerignore."""
    proc = run(["bash", str(BUILD), "--framework", "operator", "--backend", "buildah", "--dry-run"], 30)
    assert proc.returncode == 0, report(proc)
    cmd = shlex.split(proc.stdout)
    assert cmd[:2] == ["buildah", "bud"]
    for flag, value in (
        ("--isolation", "chroot"),
        ("--network", "host"),
        ("-t", OPERATOR),
        ("--target", "runtime"),
    ):
        assert cmd[cmd.index(flag) + 1] == value, (flag, cmd)
    assert "--layers" in cmd and cmd[-1] == str(ROOT)
    dockerfile = ROOT / "container" / "Dockerfile.operator"
    assert cmd[cmd.index("-f") + 1] == str(dockerfile)
    assert cmd[cmd.index("--ignorefile") + 1] == f"{dockerfile}.dockerignore"
    base = run(["bash", str(BUILD), "--framework", "operator", "--backend", "buildah", "--dry-run",
                "--base-image", "localhost/my-base:1"], 30)  # fmt: skip
    assert "BASE_IMAGE=localhost/my-base:1" in shlex.split(base.stdout), report(base)


@pytest.fixture(scope="module")
def operator_image() -> str:
    """The operator image, built from this checkout (layers cached between runs) into buildah's
    storage, where smoke.sh reads it (even where a Docker engine would be the default backend)."""
    proc = run(["bash", str(BUILD), "--framework", "operator", "--backend", "buildah"], 1500)
    assert proc.returncode == 0, report(proc)
    return OPERATOR


@needs_tools
@pytest.mark.timeout(1800)
def test_operator_image_builds_with_this_checkout(operator_image: str) -> None:
    info = json.loads(run(["buildah", "inspect", "--type", "image", operator_image], 30).stdout)
    config = info["OCIv1"]["config"]
    assert config["User"] == "1000:1000"
    assert config["Cmd"] == ["python3", "-m", "dynamo.operator"]
    assert config["Labels"]["org.opencontainers.image.version"] == VERSION
    # The package in the image is this checkout's (a stale cached layer would fail here).
    ctr = run(["buildah", "from", "--pull=never", "--quiet", operator_image], 60).stdout.strip()
    try:
        mnt = Path(run(["buildah", "mount", ctr], 60).stdout.strip())
        installed = list(mnt.glob("opt/dynamo/venv/lib/python3*/site-packages/dynamo/operator/__main__.py"))
        assert len(installed) == 1, installed
        assert installed[0].read_bytes() == (ROOT / "dynamo" / "operator" / "__main__.py").read_bytes()
        assert not (mnt / "src").exists() and not list(mnt.glob("root/.cache/pip*"))  # build stage only
    finally:
        run(["buildah", "rm", ctr], 60)


def smoke_dirs() -> set[Path]:
    return set(Path("/tmp").glob("dynamo-smoke.*"))


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """smoke.sh must leave no working container, mount or work folder behind, passed or failed
    (its logs go to the test's own folder through --logs)."""
    before, mounts, dirs = buildah_containers(), storage_mounts(), smoke_dirs()
    yield
    assert buildah_containers() == before
    assert storage_mounts() == mounts
    assert smoke_dirs() <= dirs


@needs_tools
@pytest.mark.timeout(600)
def test_operator_image_smoke(operator_image: str, no_leftovers: None, tmp_path: Path) -> None:
    proc = run(["bash", str(SMOKE), operator_image, "--timeout", "300", "--logs", str(tmp_path)], 360)
    assert proc.returncode == 0, report(proc)
    assert "ok: non-root user 1000:1000 (dynamo)" in proc.stdout
    assert "ok: entrypoint 'python3 -m dynamo.operator --help' runs as dynamo in /" in proc.stdout


def _variant(base: str, name: str, *config: str) -> Iterator[str]:
    """``base`` with changed configuration (``buildah config`` flags), removed afterwards."""
    ctr = run(["buildah", "from", "--pull=never", "--quiet", base], 60).stdout.strip()
    try:
        proc = run(["buildah", "config", *config, ctr], 60)
        assert proc.returncode == 0, report(proc)
        proc = run(["buildah", "commit", "--quiet", "--rm", ctr, name], 300)
        assert proc.returncode == 0, report(proc)
    except BaseException:
        run(["buildah", "rm", ctr], 60)
        raise
    try:
        yield name
    finally:
        run(["buildah", "rmi", name], 60)


@pytest.fixture
def root_image(operator_image: str) -> Iterator[str]:
    yield from _variant(operator_image, "localhost/dynamo-smoke-test:root", "--user", "0:0")


@pytest.fixture
def broken_entrypoint_image(operator_image: str) -> Iterator[str]:
    yield from _variant(
        operator_image,
        "localhost/dynamo-smoke-test:entrypoint",
        "--cmd",
        '["python3", "-m", "dynamo.no_such_module"]',
    )


@needs_tools
@pytest.mark.timeout(600)
def test_smoke_rejects_an_image_running_as_root(root_image: str, no_leftovers: None, tmp_path: Path) -> None:
    proc = run(["bash", str(SMOKE), root_image, "--timeout", "120", "--logs", str(tmp_path)], 180)
    assert proc.returncode != 0, report(proc)
    assert "FAIL: the image's user '0:0' is root or unknown" in proc.stdout, report(proc)


@needs_tools
@pytest.mark.timeout(600)
def test_smoke_rejects_a_broken_entrypoint(
    broken_entrypoint_image: str, no_leftovers: None, tmp_path: Path
) -> None:
    proc = run(
        ["bash", str(SMOKE), broken_entrypoint_image, "--timeout", "120", "--logs", str(tmp_path)], 180
    )
    assert proc.returncode != 0, report(proc)
    assert "FAIL: 'python3 -m dynamo.no_such_module --help' exited with 1" in proc.stdout, report(proc)
    assert "No module named dynamo.no_such_module" in proc.stderr, report(proc)  # the log tail is shown
    assert "No module named dynamo.no_such_module" in (tmp_path / "operator-help.log").read_text()
