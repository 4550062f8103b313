"""Serving stacks for the benchmarks: our frontend + mocker, the reference's, or any URL.

Each stack runs as real processes (``python -m dynamo.frontend`` and ``python -m dynamo.mocker``)
with file discovery in a private temporary folder, TCP request plane and ZMQ event plane. CPU
time is read from ``/proc`` for every process of a stack, children included (``--http-workers``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dynamo.runtime.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TURN_TRACE_DIR = Path(__file__).resolve().parent / "turn_trace"  # its sitecustomize: the loop-turn tracer
REF_VENV = Path(os.environ.get("DYN_REF_VENV", "/work/ref-dynamo-venv"))
COMMON = ["--discovery-backend", "file", "--request-plane", "tcp", "--event-plane", "zmq"]
_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def main_thread_runq_wait(pid: int) -> float:
    """Seconds the process's main thread (its event loop) spent runnable but waiting for a core
    (``/proc/<pid>/task/<pid>/schedstat``; 0 if it is gone): lag the machine, not the code, caused."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def machine_busy() -> float:
    """CPU seconds this machine ran anything since boot (all cores; steal and idle excluded)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / _TICK


def http_json(url: str, timeout: float = 2.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@dataclass
class Stack:
    """A frontend (+ workers) reachable at ``url``, serving ``model``."""

    name: str
    url: str
    model: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    tmp: str | None = None

    def cpu(self) -> dict[str, float]:
        """CPU seconds per role (frontend, mocker), children included."""
        return {role: sum(proc_cpu(p) for p in descendants(proc.pid)) for role, proc in self.procs.items()}

    def runq_wait(self) -> dict[str, float]:
        """Run-queue wait seconds of the main threads per role (frontend, mocker), children included."""
        return {
            role: sum(main_thread_runq_wait(p) for p in descendants(proc.pid))
            for role, proc in self.procs.items()
        }

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for role, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = self.log_tail(role)
                    raise RuntimeError(f"{self.name} {role} exited with {proc.returncode}:\n{tail}")
            try:
                data = http_json(f"{self.url}/v1/models")
                if any(m.get("id") == self.model for m in data.get("data", [])):  # type: ignore[union-attr]
                    return
            except Exception:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} did not serve {self.model} within {timeout:.0f}s")

    def log_path(self, role: str) -> Path | None:
        """Where ``role``'s output goes (None for a stack without its own directory)."""
        return Path(self.tmp) / f"{role}.log" if self.tmp is not None else None

    def log_tail(self, role: str, lines: int = 20) -> str:
        path = self.log_path(role)
        if path is None:
            return ""
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self.tmp and not os.environ.get("BENCH_KEEP_LOGS"):
            shutil.rmtree(self.tmp, ignore_errors=True)


def _spawn(args: list[str], env: dict[str, str], cwd: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


def start_ours(
    model_path: str,
    model: str,
    speedup: float,
    http_workers: int = 1,
    frontend_args: tuple[str, ...] = (),
    python: str = sys.executable,
    root: Path = ROOT,
    name: str = "ours",
    mocker_args: tuple[str, ...] = (),
    frontend_nice: int = 0,
    trace_turns_ms: float = 0.0,
) -> Stack:
    """Our ``dynamo.frontend`` + ``dynamo.mocker`` from this checkout (or another one, ``root``:
    e.g. a ``git worktree`` of an older commit, to measure a change side by side). ``frontend_nice``:
    run the frontend under ``nice -n`` (negative: ahead of the load generator and the mocker for a
    core, to tell the frontend's own loop stalls from waiting for a core on a saturated machine).
    ``trace_turns_ms``: the frontend logs its loop turns of that many ms or more (on asyncio's own
    loop: ``benchmarks/turn_trace``)."""
    tmp = tempfile.mkdtemp(prefix=f"bench-{name}-")
    port = free_port()
    env = {**os.environ, "DYN_FILE_DISCOVERY_DIR": tmp, "DYN_LOG": "warning", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = str(root)
    fe_env = dict(env)
    if trace_turns_ms:
        fe_env["PYTHONPATH"] = f"{TURN_TRACE_DIR}{os.pathsep}{root}"
        fe_env["DYN_BENCH_TURN_TRACE_MS"] = f"{trace_turns_ms:g}"
    fe = [python, "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(port), *COMMON]
    if http_workers > 1:
        fe += ["--http-workers", str(http_workers)]
    fe += list(frontend_args)
    if frontend_nice:
        fe = ["nice", "-n", str(frontend_nice), *fe]
    mk = [python, "-m", "dynamo.mocker", "--model-path", model_path, "--model-name", model]
    mk += ["--speedup-ratio", str(speedup), *COMMON, *mocker_args]
    stack = Stack(name, f"http://127.0.0.1:{port}", model, tmp=tmp)
    stack.procs["frontend"] = _spawn(fe, fe_env, str(root), Path(tmp) / "frontend.log")
    if frontend_nice:
        # Its own session is its own scheduler autogroup (sched_autogroup_enabled): a nice value
        # counts only inside the group, so the group gets it too (root may lower it).
        with contextlib.suppress(OSError):
            Path(f"/proc/{stack.procs['frontend'].pid}/autogroup").write_text(str(frontend_nice))
    stack.procs["mocker"] = _spawn(mk, env, str(root), Path(tmp) / "mocker.log")
    return stack


def start_reference(
    model_path: str,
    model: str,
    speedup: float,
    venv: Path = REF_VENV,
    frontend_args: tuple[str, ...] = (),
    mocker_args: tuple[str, ...] = (),
) -> Stack:
    """NVIDIA Dynamo 1.6.1's frontend + mocker from its own virtual environment.

    It runs in a temporary folder so that this checkout's ``dynamo`` package is not on its path.
    """
    python = str(venv / "bin" / "python")
    if not os.path.exists(python):
        raise FileNotFoundError(f"no reference install at {venv} (see benchmarks/README.md)")
    tmp = tempfile.mkdtemp(prefix="bench-ref-")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"DYN_FILE_KV": tmp, "DYN_LOG": "warn", "PYTHONUNBUFFERED": "1"})
    fe = [python, "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(port), *COMMON]
    fe += list(frontend_args)
    mk = [python, "-m", "dynamo.mocker", "--model-path", model_path, "--model-name", model]
    mk += ["--speedup-ratio", str(speedup), *COMMON, *mocker_args]
    stack = Stack("reference", f"http://127.0.0.1:{port}", model, tmp=tmp)
    stack.procs["frontend"] = _spawn(fe, env, tmp, Path(tmp) / "frontend.log")
    stack.procs["mocker"] = _spawn(mk, env, tmp, Path(tmp) / "mocker.log")
    return stack


def model_dir(name: str = "smollm2") -> str:
    """The prepared model folder (tokenizer only is enough for the mocker)."""
    out = subprocess.run(
        [sys.executable, "-m", "dynamo.models", "prepare", name, "--tokenizer-only"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return out.stdout.strip().splitlines()[-1]
