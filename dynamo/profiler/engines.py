"""The engines the profiler measures and generates graphs for: how each one is started as a graph
service, and which of its batch settings a sweep varies.

Contract: ``engine(request)`` gives the ``Engine`` of a request (the mocker when it asks for one).
``Engine.worker_script`` is the worker's shell command (the examples' pattern: ``exec python3 -m
dynamo.<backend> ... > >(tee /tmp/worker.log) 2>&1``), for one role (``agg``, ``prefill``,
``decode``) and one ``Candidate`` (its batch flags). ``Engine.candidates`` is the sweep: the batch
sizes of ``searchStrategy`` (``rapid``: few, ``thorough``: more), or the ones asked for.

Devices: on a GPU node each engine has one GPU; on the CPU build (no GPU visible) vLLM runs in
fp32, eager, with a 1 GiB KV cache (``VLLM_CPU_KVCACHE_SPACE``), and an "engine" counts as one unit
of the budget. The mocker needs no device; it reads a tokenizer (``spec.model`` when that is a local
folder, else SmolLM2's, prepared by ``python3 -m dynamo.models``).

Journey: profiling (before serving): which processes a measured or generated graph runs.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from dynamo.deploy.request import DeploymentRequest

ROLES = ("agg", "prefill", "decode")
SMOLLM2_TOKENIZER = '"$(python3 -m dynamo.models prepare smollm2 --tokenizer-only -q)"'
SMOLLM2_MODEL = '"$(python3 -m dynamo.models prepare smollm2)"'


@dataclass(frozen=True)
class Candidate:
    """One engine configuration: its batch size (the most sequences a step holds)."""

    batch: int

    @property
    def label(self) -> str:
        return f"batch {self.batch}"


@dataclass(frozen=True)
class Engine:
    """One backend's commands and knobs."""

    backend: str  # vllm | sglang | trtllm | mocker
    module: str  # python3 -m <module>
    prefix: str  # service name prefix: Vllm, SGLang, TRTLLM, Mocker
    batch_flag: str
    rapid: tuple[int, ...]
    thorough: tuple[int, ...]
    device: str = "gpu"  # gpu | cpu | none (the mocker)

    def candidates(self, strategy: str, batches: list[int] | None = None) -> list[Candidate]:
        sizes = batches or list(self.thorough if strategy == "thorough" else self.rapid)
        return [Candidate(b) for b in sorted(set(sizes))]

    def model_flags(self, request: DeploymentRequest) -> str:
        model = request.model
        if self.backend == "mocker":
            path = Path(model)
            tokenizer = shlex.quote(model) if (path / "tokenizer.json").is_file() else SMOLLM2_TOKENIZER
            return f"--model-path {tokenizer} --model-name {shlex.quote(model)}"
        if self.backend == "vllm":
            if self.device == "cpu" and model.lower() in ("smollm2", "smollm2-135m-instruct"):
                return f"--model {SMOLLM2_MODEL} --served-model-name {shlex.quote(model)}"
            return f"--model {shlex.quote(model)}"
        return f"--model-path {shlex.quote(model)} --served-model-name {shlex.quote(model)}"

    def role_flags(self, role: str) -> str:
        if role == "agg":
            return ""
        if self.backend in ("vllm", "mocker"):
            return "--is-prefill-worker" if role == "prefill" else ""
        if self.backend == "sglang":
            return f"--disaggregation-mode {role} --disaggregation-transfer-backend nixl"
        return f"--disaggregation-mode {role}"

    def worker_script(
        self, request: DeploymentRequest, role: str, candidate: Candidate, extra: str = ""
    ) -> str:
        """The worker's ``bash -c`` command."""
        parts = [f"exec python3 -m {self.module}", self.model_flags(request)]
        if self.backend == "sglang":
            parts.append("--tp 1")
        if self.backend == "trtllm":
            config = "agg" if role == "agg" else role
            parts.append(
                f"--extra-engine-args $DYNAMO_HOME/deploy/examples/trtllm/engine_configs/{config}.yaml"
            )
        if self.backend == "vllm" and self.device == "cpu":
            parts.append("--dtype float32 --enforce-eager")
        if request.trust_remote_code and self.backend in ("vllm", "sglang"):
            parts.append("--trust-remote-code")
        parts += [self.role_flags(role), f"{self.batch_flag} {candidate.batch}", extra]
        parts.append("> >(tee /tmp/worker.log) 2>&1")
        return " ".join(p for p in parts if p)

    def worker_env(self) -> list[dict[str, str]]:
        if self.backend == "vllm" and self.device == "cpu":
            return [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"}]
        return []

    def service_name(self, role: str) -> str:
        return f"{self.prefix}{'Prefill' if role == 'prefill' else 'Decode'}Worker"


_ENGINES = {
    "vllm": Engine("vllm", "dynamo.vllm", "Vllm", "--max-num-seqs", (8,), (4, 8, 16)),
    "sglang": Engine("sglang", "dynamo.sglang", "SGLang", "--max-running-requests", (64,), (32, 64, 128)),
    "trtllm": Engine("trtllm", "dynamo.trtllm", "TRTLLM", "--max-batch-size", (64,), (32, 64, 128)),
    "mocker": Engine(
        "mocker", "dynamo.mocker", "Mocker", "--max-num-seqs", (8, 32), (4, 8, 16, 32, 64), "none"
    ),
}


def gpu_visible() -> bool:
    """Whether this process sees an NVIDIA GPU."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists()


def engine(request: DeploymentRequest, device: str | None = None) -> Engine:
    """The engine a request is profiled and served with (``device``: gpu or cpu; default: what
    this machine has)."""
    if request.mocker:
        return _ENGINES["mocker"]
    base = _ENGINES[request.backend]
    dev = device or ("gpu" if gpu_visible() else "cpu")
    return Engine(base.backend, base.module, base.prefix, base.batch_flag, base.rapid, base.thorough, dev)
