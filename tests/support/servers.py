"""Real etcd and NATS servers for tests, on free loopback ports with temporary data dirs."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.support.procs import ManagedProcess, free_port, http_ok, wait_until


def find_binary(name: str) -> str | None:
    for candidate in (shutil.which(name), f"/usr/bin/{name}", f"/usr/sbin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


class EtcdServer:
    """An etcd member on 127.0.0.1 that can be stopped and restarted on the same data dir."""

    def __init__(self, log_dir: Path) -> None:
        binary = find_binary("etcd")
        if binary is None:
            raise RuntimeError("etcd is not installed (run .ci/run or: apt-get install etcd-server)")
        self.binary = binary
        self.log_dir = log_dir
        self.data_dir = tempfile.mkdtemp(prefix="etcd-")
        self.port = free_port()
        self.peer_port = free_port()
        self.proc: ManagedProcess | None = None
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.starts += 1
        self.proc = ManagedProcess(
            f"etcd-{self.port}-{self.starts}",
            [
                self.binary,
                "--name",
                "t",
                "--data-dir",
                self.data_dir,
                "--listen-client-urls",
                self.endpoint,
                "--advertise-client-urls",
                self.endpoint,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"t={peer}",
            ],
            self.log_dir,
            env={"ETCD_UNSUPPORTED_ARCH": "arm64"},
        )
        wait_until(lambda: http_ok(f"{self.endpoint}/health"), 20, "etcd health")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class NatsServer:
    """A nats-server with JetStream on 127.0.0.1."""

    def __init__(self, log_dir: Path) -> None:
        binary = find_binary("nats-server")
        if binary is None:
            raise RuntimeError("nats-server is not installed (run .ci/run or: apt-get install nats-server)")
        self.binary = binary
        self.log_dir = log_dir
        self.store_dir = tempfile.mkdtemp(prefix="nats-")
        self.port = free_port()
        self.monitor_port = free_port()
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = ManagedProcess(
            f"nats-{self.port}",
            [
                self.binary,
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                self.store_dir,
                "-m",
                str(self.monitor_port),
            ],
            self.log_dir,
        )
        wait_until(lambda: http_ok(f"http://127.0.0.1:{self.monitor_port}/healthz"), 20, "nats health")

    def cleanup(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
        shutil.rmtree(self.store_dir, ignore_errors=True)
