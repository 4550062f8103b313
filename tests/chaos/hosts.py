"""Simulated hosts for chaos tests: Linux network namespaces on a private bridge.

A ``Lab`` owns one bridge (no uplink, no default route) and a /24 of 10.77.x.0 picked free for
this run; the test process itself sits on the bridge at ``.1`` (so it can be the client). Each
``lab.host(name)`` is a network namespace with its own veth on the bridge and its own address,
so every address a component advertises is really used from another host. Processes are started
inside a host with ``ip netns exec`` (it execs the program: the process id is the program's) and
are ``ManagedProcess`` objects (log file, always stopped, tail printed on failure).

Fault verbs: ``Host.cut()`` / ``Host.restore()`` take the host's link down and up (packets are
dropped silently: no FIN or RST reaches anyone); ``HostProcess.kill9 / sigterm / pause / resume``
signal a process (pause is SIGSTOP, a hung peer). Everything is torn down at the end: processes
killed (a paused one is resumed first so it can die), namespaces and links deleted.

Needs root and ``ip netns``; ``skip_reason()`` says why not when they are missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.support.procs import ROOT, ManagedProcess, http_ok, wait_until
from tests.support.servers import etcd_command, nats_command, require_binary

ETCD_PORT = 2379
ETCD_PEER_PORT = 2380
NATS_PORT = 4222
NATS_MONITOR_PORT = 8222
HTTP_PORT = 8000
SYSTEM_PORT = 9090
_SUBNET_LOCK = Path(tempfile.gettempdir()) / "dynamo-chaos-subnets.lock"


def skip_reason() -> str | None:
    """Why chaos tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "chaos tests need root (network namespaces and a bridge)"
    if shutil.which("ip") is None:
        return "chaos tests need iproute2's `ip` command"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` is not usable here: {probe.stderr.strip()}"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


class HostProcess(ManagedProcess):
    """A process on a simulated host, with the fault verbs."""

    paused = False

    def sigterm(self) -> None:
        """SIGTERM (a graceful stop request); does not wait."""
        self.resume()
        self.signal(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP the process group: the process holds its sockets open but answers nothing."""
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.signal(signal.SIGCONT)
            self.paused = False

    def kill9(self) -> None:
        self.resume()
        super().kill9()

    def stop(self, grace: float = 10.0) -> int | None:
        self.resume()
        return super().stop(grace)


class Host:
    """One simulated machine: a network namespace with one address on the lab's bridge."""

    def __init__(self, lab: Lab, name: str, ip: str, netns: str, veth: str) -> None:
        self.lab = lab
        self.name = name
        self.ip = ip
        self.netns = netns
        self.veth = veth  # the bridge-side end, in the root namespace
        self.procs: list[HostProcess] = []
        self.is_cut = False

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a dynamo process on this host: listen on and advertise this host's address."""
        env = {
            "DYN_TCP_RPC_HOST": self.ip,
            "DYN_ADVERTISE_HOST": self.ip,
            "UCX_TLS": "tcp",
            "VLLM_NIXL_SIDE_CHANNEL_HOST": self.ip,
            "NO_PROXY": "*",
        }
        env.update(self.lab.env)
        if extra:
            env.update(extra)
        return env

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> HostProcess:
        """Start ``argv`` inside this host's namespace (logs under the lab's log dir)."""
        proc = HostProcess(
            f"{self.name}-{name}", ["ip", "netns", "exec", self.netns, *argv], self.lab.log_dir, self.env(env)
        )
        self.procs.append(proc)
        return proc

    def run(self, argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """Run a short command inside this host and return its result."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True, timeout=timeout
        )

    def cut(self) -> None:
        """Take the host's link down: every packet to or from it is dropped, nobody sees a FIN."""
        _ip("link", "set", self.veth, "down")
        self.is_cut = True

    def restore(self) -> None:
        """Bring the link back up (connections that did not time out carry on)."""
        _ip("link", "set", self.veth, "up")
        self.is_cut = False

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop(grace=5)


def _empty(directory: str) -> None:
    """Lose a server's data: its directory, empty."""
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)


class EtcdOnHost:
    """An etcd member on a host; ``restart(keep_data=False)`` brings it back empty."""

    def __init__(self, host: Host) -> None:
        self.binary = require_binary("etcd", "etcd-server")
        self.host = host
        self.data_dir = tempfile.mkdtemp(prefix="chaos-etcd-")
        self.proc: HostProcess | None = None
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return f"http://{self.host.ip}:{ETCD_PORT}"

    def start(self) -> None:
        self.starts += 1
        self.proc = self.host.spawn(
            f"etcd-{self.starts}",
            etcd_command(self.binary, "chaos", self.data_dir, self.host.ip, ETCD_PORT, ETCD_PEER_PORT),
            env={"ETCD_UNSUPPORTED_ARCH": "arm64"},
        )
        wait_until(lambda: self._alive() and http_ok(f"{self.endpoint}/health"), 20, "etcd health")

    def _alive(self) -> bool:
        if self.proc is not None and not self.proc.alive():
            raise RuntimeError(f"etcd exited:\n{self.proc.tail()}")
        return True

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def restart(self, keep_data: bool = True) -> None:
        """Stop, optionally wipe the data dir (etcd comes back knowing nothing), start again."""
        self.stop()
        if not keep_data:
            _empty(self.data_dir)
        self.start()


class NatsOnHost:
    """A nats-server with JetStream on a host; ``restart(keep_data=False)`` wipes its store."""

    def __init__(self, host: Host) -> None:
        self.binary = require_binary("nats-server", "nats-server")
        self.host = host
        self.store_dir = tempfile.mkdtemp(prefix="chaos-nats-")
        self.proc: HostProcess | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://{self.host.ip}:{NATS_PORT}"

    def start(self) -> None:
        self.starts += 1
        self.proc = self.host.spawn(
            f"nats-{self.starts}",
            nats_command(self.binary, self.host.ip, NATS_PORT, self.store_dir, NATS_MONITOR_PORT),
        )
        wait_until(lambda: http_ok(f"http://{self.host.ip}:{NATS_MONITOR_PORT}/healthz"), 20, "nats health")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def restart(self, keep_data: bool = True) -> None:
        self.stop()
        if not keep_data:
            _empty(self.store_dir)
        self.start()


class FrontendOnHost:
    """``python -m dynamo.frontend`` on a host, listening on ``HTTP_PORT`` of the host's address."""

    def __init__(
        self, host: Host, *args: str, env: dict[str, str] | None = None, name: str = "frontend"
    ) -> None:
        self.host = host
        self.url = f"http://{host.ip}:{HTTP_PORT}"
        self.proc = host.spawn(
            name,
            [
                sys.executable,
                "-m",
                "dynamo.frontend",
                "--http-host",
                host.ip,
                "--http-port",
                str(HTTP_PORT),
                *args,
            ],
            env,
        )
        wait_until(lambda: self._alive() and http_ok(f"{self.url}/live"), 60, f"{name} /live")

    def _alive(self) -> bool:
        if not self.proc.alive():
            raise RuntimeError(f"frontend exited:\n{self.proc.tail()}")
        return True

    def instances(self) -> list[dict]:
        """The instances the frontend's ``/health`` lists (empty if it does not answer)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.url}/health", timeout=5) as r:
                return list(json.loads(r.read()).get("instances", []))
        except urllib.error.HTTPError as e:
            return list(json.loads(e.read()).get("instances", []))
        except Exception:
            return []

    def wait_for_instances(self, count: int, timeout: float = 30) -> None:
        wait_until(lambda: len(self.instances()) == count, timeout, f"{count} instances in /health")

    def stop(self) -> None:
        self.proc.stop()


class Lab:
    """A bridge, its hosts and everything started on them; use as a context manager."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.run_id = secrets.token_hex(2)
        self.log_dir = log_dir
        self.env: dict[str, str] = dict(env or {})
        self.bridge = f"cb{self.run_id}"
        self.subnet: int | None = None
        self.hosts: dict[str, Host] = {}
        self._etcds: list[EtcdOnHost] = []
        self._natses: list[NatsOnHost] = []
        self._frontends: list[FrontendOnHost] = []
        self._iptables = False

    # --- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        reason = skip_reason()
        if reason is not None:
            raise RuntimeError(reason)
        with open(_SUBNET_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = _ip("-o", "-4", "addr", "show").stdout
            for x in range(1 + secrets.randbelow(200), 255):
                if f"10.77.{x}." not in used:
                    self.subnet = x
                    break
            else:
                raise RuntimeError("no free 10.77.x.0/24 subnet for the chaos lab")
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"10.77.{self.subnet}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        # Bridged frames may meet the host's iptables (br_netfilter): let the lab's own through.
        self._iptables = shutil.which("iptables") is not None and self._iptables_rule("-I")
        return self

    def _iptables_rule(self, action: str) -> bool:
        argv = ["iptables", action, "FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        return subprocess.run(argv, capture_output=True, timeout=20).returncode == 0

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                host.stop_all()
        for etcd in self._etcds:
            shutil.rmtree(etcd.data_dir, ignore_errors=True)
        for nats in self._natses:
            shutil.rmtree(nats.store_dir, ignore_errors=True)
        for host in self.hosts.values():
            _ip("link", "del", host.veth, check=False)
            _ip("netns", "del", host.netns, check=False)
        self.hosts.clear()
        _ip("link", "del", self.bridge, check=False)
        if self._iptables:
            self._iptables_rule("-D")
            self._iptables = False

    @property
    def client_ip(self) -> str:
        """The test process's own address on the bridge."""
        return f"10.77.{self.subnet}.1"

    # --- hosts ------------------------------------------------------------------------------
    def host(self, name: str) -> Host:
        """A new host called ``name`` (unique within the lab), with its own namespace and address."""
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists")
        index = len(self.hosts) + 2
        if index > 250:
            raise RuntimeError("too many hosts in one lab")
        netns = f"chaos-{self.run_id}-{name}"
        veth = f"cv{self.run_id}{index}"
        inner = f"ci{self.run_id}{index}"
        ip = f"10.77.{self.subnet}.{index}"
        _ip("netns", "add", netns)
        host = Host(self, name, ip, netns, veth)
        self.hosts[name] = host  # torn down from here on, whatever fails next
        _ip("link", "add", veth, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", netns)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "link", "set", inner, "name", "eth0")
        _ip("-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        return host

    # --- components -------------------------------------------------------------------------
    def etcd(self, host: Host) -> EtcdOnHost:
        """Start etcd on ``host``; the lab's processes get ``ETCD_ENDPOINTS`` pointing at it."""
        server = EtcdOnHost(host)
        self._etcds.append(server)
        server.start()
        self.env.setdefault("DYN_DISCOVERY_BACKEND", "etcd")
        self.env["ETCD_ENDPOINTS"] = server.endpoint
        return server

    def nats(self, host: Host) -> NatsOnHost:
        """Start NATS on ``host``; the lab's processes get ``NATS_SERVER`` and the NATS event plane."""
        server = NatsOnHost(host)
        self._natses.append(server)
        server.start()
        self.env["NATS_SERVER"] = server.url
        self.env["DYN_EVENT_PLANE"] = "nats"
        return server

    def frontend(
        self, host: Host, *args: str, env: dict[str, str] | None = None, name: str = "frontend"
    ) -> FrontendOnHost:
        """A frontend on ``host`` (``HTTP_PORT``), returned once ``/live`` answers."""
        fe = FrontendOnHost(host, *args, env=env, name=name)
        self._frontends.append(fe)
        return fe

    def mocker(
        self,
        host: Host,
        model_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        name: str = "mocker",
        wait: bool = True,
    ) -> HostProcess:
        """A mocker worker on ``host`` (status server on ``SYSTEM_PORT``), once it is initialized."""
        extra = {"DYN_SYSTEM_PORT": str(SYSTEM_PORT)}
        if env:
            extra.update(env)
        proc = host.spawn(
            name, [sys.executable, "-m", "dynamo.mocker", "--model-path", str(model_dir), *args], extra
        )
        if wait:
            proc.wait_for_log("initialized", timeout=90)
        return proc


@contextlib.contextmanager
def lab_context(log_dir: Path, env: dict[str, str] | None = None) -> Iterator[Lab]:
    """``with lab_context(log_dir) as lab:`` — the same as ``with Lab(log_dir) as lab``."""
    with Lab(log_dir, env) as lab:
        yield lab


__all__ = [
    "HTTP_PORT",
    "ROOT",
    "SYSTEM_PORT",
    "EtcdOnHost",
    "FrontendOnHost",
    "Host",
    "HostProcess",
    "Lab",
    "NatsOnHost",
    "lab_context",
    "skip_reason",
]
