"""Running ``python3 -m dynamo.deploy run`` as a real subprocess in tests, and always stopping it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class RunnerProcess:
    """The runner CLI with its output in a file (read while it runs)."""

    def __init__(self, args: list[str], out: Path, env: dict[str, str]) -> None:
        self.out = out
        self._file = out.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dynamo.deploy", "run", *args],
            stdout=self._file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.out.read_text()

    def wait_for_text(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"runner exited ({self.proc.returncode}) before printing {needle!r}:\n{text}"
                )
            time.sleep(0.1)
        raise AssertionError(f"runner did not print {needle!r} within {timeout}s:\n{self.text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._file.close()


@contextlib.contextmanager
def runner(args: list[str], out: Path, env: dict[str, str]) -> Iterator[RunnerProcess]:
    """Start the runner; on the way out make sure it and its whole graph are gone, and show its
    output if the test failed."""
    rp = RunnerProcess(args, out, env)
    try:
        yield rp
    except BaseException:
        print(f"--- runner output ({out}) ---\n{rp.text()}")
        for log in sorted(out.parent.rglob("output.log")):
            print(f"--- {log} (tail) ---")
            print("\n".join(log.read_text(errors="replace").splitlines()[-20:]))
        raise
    finally:
        # SIGTERM first: the runner stops its graph's processes (each in its own session, so a
        # SIGKILL of the runner alone would leave them running), then whatever is left is killed.
        with contextlib.suppress(subprocess.TimeoutExpired):
            rp.stop(signal.SIGTERM, timeout=30)
        rp.kill()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True
