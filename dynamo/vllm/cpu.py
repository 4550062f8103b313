"""OpenMP core binding for vLLM engines on the CPU build, so engines on one machine don't share cores.

Journey: used once, when the **engine** starts (before any request). vLLM's own ``auto`` binding
pins every engine on a machine to the same cores, so two workers would halve each other's speed.

Choice, first that applies:
1. ``VLLM_CPU_OMP_THREADS_BIND`` already set: vLLM uses it, we do nothing.
2. ``--cpu-core`` / ``DYN_CPU_CORE`` (e.g. ``0``, ``2-3``): used as given.
3. Free-slot heuristic: the cores this process may run on (``sched_getaffinity``) are cut into
   slots of ``DYN_CPU_CORES_PER_WORKER`` cores (default: half of them, at least one, so two
   workers fit side by side). A worker takes the first slot whose per-core lock files
   (``fcntl.flock`` in ``DYN_CPU_LOCK_DIR``, default ``<tmp>/dynamo-cpu-cores-<uid>``) it can all
   lock, and holds them until it stops or dies (the kernel drops the locks with the process).
   When every slot is taken it logs a warning and binds to all the cores it may use.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def _lock_dir() -> Path:
    configured = os.environ.get("DYN_CPU_LOCK_DIR")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"dynamo-cpu-cores-{os.getuid()}"


def _available_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def _cores_per_worker(n_available: int) -> int:
    raw = os.environ.get("DYN_CPU_CORES_PER_WORKER")
    if raw:
        try:
            return max(1, min(int(raw), n_available))
        except ValueError:
            logger.warning("ignoring DYN_CPU_CORES_PER_WORKER=%r: not an integer", raw)
    return max(1, n_available // 2)


@dataclass
class CoreClaim:
    """Cores an engine is bound to, and the lock files that reserve them while it runs."""

    cores: str | None  # the VLLM_CPU_OMP_THREADS_BIND value we set; None: left to the environment
    _fds: list[int] = field(default_factory=list)

    def release(self) -> None:
        """Give the cores back (closing the lock files drops the locks) and unset what we set."""
        if self.cores is not None and os.environ.get(BIND_ENV) == self.cores:
            del os.environ[BIND_ENV]
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()


def _try_lock(paths: list[Path]) -> list[int] | None:
    fds: list[int] = []
    for path in paths:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            for held in fds:
                os.close(held)
            return None
        fds.append(fd)
    return fds


def claim_cores(explicit: str | None) -> CoreClaim:
    """Choose this engine's cores and set ``VLLM_CPU_OMP_THREADS_BIND`` (blocking file I/O: call
    from a thread, before the engine starts)."""
    if os.environ.get(BIND_ENV):
        logger.info("CPU binding from %s=%s", BIND_ENV, os.environ[BIND_ENV])
        return CoreClaim(cores=None)
    if explicit:
        os.environ[BIND_ENV] = explicit
        logger.info("CPU binding from --cpu-core/DYN_CPU_CORE: cores %s", explicit)
        return CoreClaim(cores=explicit)

    cores = _available_cores()
    per_worker = _cores_per_worker(len(cores))
    lock_dir = _lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(cores) - per_worker + 1, per_worker):
        slot = cores[start : start + per_worker]
        fds = _try_lock([lock_dir / f"core-{c}.lock" for c in slot])
        if fds is not None:
            bind = ",".join(str(c) for c in slot)
            os.environ[BIND_ENV] = bind
            logger.info(
                "CPU binding: claimed free cores %s (%d per worker, locks in %s)", bind, per_worker, lock_dir
            )
            return CoreClaim(cores=bind, _fds=fds)
    bind = ",".join(str(c) for c in cores)
    logger.warning(
        "CPU binding: every slot of %d core(s) is taken by other workers; sharing cores %s "
        "(set --cpu-core or DYN_CPU_CORE to choose)",
        per_worker,
        bind,
    )
    os.environ[BIND_ENV] = bind
    return CoreClaim(cores=bind)
