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


def require_binary(name: str, package: str) -> str:
    """The path of ``name``, or a ``RuntimeError`` saying how to install it."""
    binary = find_binary(name)
    if binary is None:
        raise RuntimeError(f"{name} is not installed (run .ci/run or: apt-get install {package})")
    return binary


def etcd_command(
    binary: str, name: str, data_dir: str, host: str, port: int, peer_port: int, client_scheme: str = "http"
) -> list[str]:
    """A one-member etcd cluster serving clients on ``host:port`` (``https``: add the TLS flags)."""
    client, peer = f"{client_scheme}://{host}:{port}", f"http://{host}:{peer_port}"
    return [
        binary,
        "--name",
        name,
        "--data-dir",
        data_dir,
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        f"{name}={peer}",
    ]


def nats_command(binary: str, host: str, port: int, store_dir: str, monitor_port: int) -> list[str]:
    """A nats-server with JetStream on ``host:port`` (health on ``monitor_port``)."""
    return [binary, "-a", host, "-p", str(port), "-js", "-sd", store_dir, "-m", str(monitor_port)]


class EtcdServer:
    """An etcd member on 127.0.0.1 that can be stopped and restarted on the same data dir."""

    def __init__(self, log_dir: Path) -> None:
        self.binary = require_binary("etcd", "etcd-server")
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
        self.starts += 1
        self.proc = ManagedProcess(
            f"etcd-{self.port}-{self.starts}",
            etcd_command(self.binary, "t", self.data_dir, "127.0.0.1", self.port, self.peer_port),
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
        self.binary = require_binary("nats-server", "nats-server")
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
            nats_command(self.binary, "127.0.0.1", self.port, self.store_dir, self.monitor_port),
            self.log_dir,
        )
        wait_until(lambda: http_ok(f"http://127.0.0.1:{self.monitor_port}/healthz"), 20, "nats health")

    def cleanup(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
        shutil.rmtree(self.store_dir, ignore_errors=True)
