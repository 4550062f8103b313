"""From a DynamoGraphDeployment to the local processes that run it (pure: no process is started).

What a pod would get, each replica gets here: the main container's ``command`` + ``args`` (with
Kubernetes' ``$(VAR)`` expansion), the operator's injected variables, ``spec.envs`` then the
service's ``envs``. What cannot be shared on one machine is made unique per replica:

- ports: every worker replica gets its own ``DYN_SYSTEM_PORT``, every frontend replica its own
  ``DYN_HTTP_PORT`` (and ``--http-port`` in its args is rewritten to match); probes that name the
  ``system``/``http`` port (or 9090/8000) are pointed at the replica's port;
- ``/tmp``: a pod has a private one, so ``/tmp/...`` paths in the command, args and exec probes are
  rewritten to a per-replica directory (``/tmp/worker.log`` written by one worker is not read by
  another's readiness probe); a deeper path under a directory that exists on this machine
  (``/tmp/checkout/tool.py``, a repository cloned into /tmp) is the host's and is kept;
- discovery: unless ``ETCD_ENDPOINTS`` or ``DYN_FILE_DISCOVERY_DIR`` is set, the graph gets a file
  discovery directory of its own, so a stale run cannot leak workers into this one. Either way its
  frontends get ``DYN_DISCOVERY_NAMESPACES`` as the operator sets it (the graph's own Dynamo
  namespaces), so two graphs on one etcd do not share workers.
- a planner (``componentType: planner``) gets ``DYN_PLANNER_ENVIRONMENT=virtual`` (it publishes its
  decisions in the graph's store, and the runner applies them) and ``DYN_PLANNER_FRONTEND_METRICS``
  (the graph's frontends' ``/metrics`` URLs, which it scrapes for client traffic).

A replica the runner adds later (a planner scaled a service up) is laid out the same way by
``Plan.add_replica``, with the next replica index and a new port.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamo.deploy.spec import (
    FRONTEND_PORT,
    FRONTEND_PORT_NAME,
    SYSTEM_PORT,
    SYSTEM_PORT_NAME,
    EnvVar,
    Graph,
    Service,
    SpecError,
    dns_label,
    merge_envs,
)
from dynamo.runtime.ports import free_port

log = logging.getLogger(__name__)

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_TMP = re.compile(r"(?<![\w.~/-])/tmp(?=/|\s|$|['\";|&)])")
_HTTP_PORT_FLAG = re.compile(r"(--http-port(?:=|\s+))(\d+)")


@dataclass
class Process:
    """One replica of one service, as it will be started."""

    service: str
    replica: int
    component_type: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    tmp_dir: Path
    log_path: Path
    port: int
    readiness: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.service}[{self.replica}]"


PLANNER_ENVIRONMENT_ENV = "DYN_PLANNER_ENVIRONMENT"
PLANNER_FRONTEND_METRICS_ENV = "DYN_PLANNER_FRONTEND_METRICS"


@dataclass(frozen=True)
class ScaledPools:
    """The worker services one planner scales: its Dynamo namespace and, per pool (``prefill``,
    ``decode``), the service that is that pool."""

    planner: str
    namespace: str
    services: dict[str, str]


@dataclass
class _Layout:
    """What laying out one more replica needs (kept by the plan for ``add_replica``)."""

    k8s_namespace: str
    base: dict[str, str]
    secret_env: dict[str, str] | None
    here: Path
    ports: PortAllocator


@dataclass
class Plan:
    """Every process of a graph, frontends last (they come up once workers can register)."""

    graph: Graph
    processes: list[Process]
    run_dir: Path
    warnings: list[str]
    scaled: list[ScaledPools] = field(default_factory=list)
    _layout: _Layout | None = None

    def frontends(self) -> list[Process]:
        return [p for p in self.processes if p.component_type == "frontend"]

    def add_replica(self, service_name: str, replica: int) -> Process:
        """Lay out replica ``replica`` of ``service_name`` (a new port; not added to ``processes``)."""
        if self._layout is None:
            raise RuntimeError("this plan cannot add replicas")
        lay = self._layout
        service = self.graph.services[service_name]
        return _plan_process(
            self.graph,
            service,
            replica,
            lay.ports.take(),
            self.run_dir,
            lay.k8s_namespace,
            lay.base,
            lay.secret_env,
            lay.here,
        )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out distinct free TCP ports; the first frontend gets the preferred one when free."""

    def __init__(self) -> None:
        self._taken: set[int] = set()

    def take(self, preferred: int | None = None) -> int:
        if preferred and preferred not in self._taken and port_is_free(preferred):
            self._taken.add(preferred)
            return preferred
        for _ in range(100):
            port = free_port()  # below the ephemeral range: no client connection can take it meanwhile
            if port not in self._taken:
                self._taken.add(port)
                return port
        raise RuntimeError("no free TCP port found")


def expand_var_refs(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command/args: defined names are replaced, ``$$`` is ``$``,
    anything else (e.g. a shell's ``$(cmd ...)``) is left as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_REF.sub(sub, text)


_TMP_HOST_DIR = re.compile(r"/([^/\s'\";|&)]+)/")


def rewrite_tmp(text: str, tmp_dir: Path) -> str:
    """Point ``/tmp`` paths at the replica's private tmp directory (host directories excepted)."""

    def sub(m: re.Match[str]) -> str:
        deeper = _TMP_HOST_DIR.match(text, m.end())
        if deeper is not None and Path("/tmp", deeper.group(1)).is_dir():
            return m.group(0)
        return str(tmp_dir)

    return _TMP.sub(sub, text)


def load_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, optional ``export``, optional quotes)."""
    values: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"{path}:{lineno}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _env_value(env: EnvVar, pod: dict[str, str], where: str, warnings: list[str]) -> str | None:
    if env.value_from is None:
        return env.value or ""
    field_path = (env.value_from.get("fieldRef") or {}).get("fieldPath")
    known = {"status.podIP": "POD_IP", "metadata.name": "POD_NAME", "metadata.namespace": "POD_NAMESPACE"}
    if field_path in known:
        return pod[known[field_path]]
    warnings.append(f"{where}: {env.name} uses valueFrom, which has no local equivalent; left unset")
    return None


def _map_probe_port(port: Any, own_port: int, component_type: str) -> Any:
    if component_type == "frontend" and port in (FRONTEND_PORT_NAME, FRONTEND_PORT, str(FRONTEND_PORT)):
        return own_port
    if component_type != "frontend" and port in (SYSTEM_PORT_NAME, SYSTEM_PORT, str(SYSTEM_PORT)):
        return own_port
    return port


def local_probe(
    probe: dict[str, Any] | None, proc_port: int, component_type: str, tmp_dir: Path
) -> dict[str, Any] | None:
    """A readiness probe with its port and ``/tmp`` paths made local."""
    if probe is None:
        return None
    out = dict(probe)
    if "httpGet" in out:
        get = dict(out["httpGet"])
        get["port"] = _map_probe_port(get.get("port"), proc_port, component_type)
        out["httpGet"] = get
    if "tcpSocket" in out:
        tcp = dict(out["tcpSocket"])
        tcp["port"] = _map_probe_port(tcp.get("port"), proc_port, component_type)
        out["tcpSocket"] = tcp
    if "exec" in out:
        command = [rewrite_tmp(str(c), tmp_dir) for c in (out["exec"].get("command") or [])]
        out["exec"] = {"command": command}
    return out


def plan_graph(
    graph: Graph,
    run_dir: Path,
    *,
    k8s_namespace: str = "default",
    http_port: int = FRONTEND_PORT,
    base_env: dict[str, str] | None = None,
    secret_env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Plan:
    """Lay out every process of ``graph`` under ``run_dir`` (logs and per-replica tmp directories)."""
    base = dict(os.environ if base_env is None else base_env)
    base["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", os.defpath)])
    base.setdefault("PYTHONUNBUFFERED", "1")
    warnings: list[str] = []
    if not base.get("ETCD_ENDPOINTS") and not base.get("DYN_FILE_DISCOVERY_DIR"):
        base["DYN_FILE_DISCOVERY_DIR"] = str(run_dir / "discovery")
    ports = PortAllocator()
    here = cwd or Path.cwd()
    processes: list[Process] = []
    ordered = sorted(graph.services.values(), key=lambda s: s.is_frontend)
    first_frontend = True
    for service in ordered:
        if service.node_count > 1:
            warnings.append(
                f"{service.name}: multinode.nodeCount={service.node_count} runs as one process per replica locally"
            )
        if service.env_from_secret and secret_env is None:
            warnings.append(
                f"{service.name}: envFromSecret {service.env_from_secret!r} ignored (no Kubernetes secrets here); "
                "pass --env-file FILE to provide its variables"
            )
        for i in range(service.replicas):
            preferred = http_port if service.is_frontend and first_frontend else None
            port = ports.take(preferred)
            if service.is_frontend:
                first_frontend = False
            processes.append(
                _plan_process(graph, service, i, port, run_dir, k8s_namespace, base, secret_env, here)
            )
    metrics_urls = ",".join(
        f"http://127.0.0.1:{p.port}/metrics" for p in processes if p.component_type == "frontend"
    )
    for p in processes:
        if p.component_type == "planner":
            p.env.setdefault(PLANNER_ENVIRONMENT_ENV, "virtual")
            p.env.setdefault(PLANNER_FRONTEND_METRICS_ENV, metrics_urls)
    scaled = scaled_pools(graph, k8s_namespace, warnings)
    layout = _Layout(k8s_namespace, base, secret_env, here, ports)
    return Plan(
        graph=graph, processes=processes, run_dir=run_dir, warnings=warnings, scaled=scaled, _layout=layout
    )


def scaled_pools(graph: Graph, k8s_namespace: str, warnings: list[str]) -> list[ScaledPools]:
    """For each planner of ``graph``: the worker services in its Dynamo namespace, by pool (a
    ``subComponentType: prefill`` service is the prefill pool, any other worker the decode pool)."""
    out = []
    for planner in graph.services.values():
        if planner.component_type != "planner":
            continue
        ns = planner.dynamo_namespace_in(k8s_namespace, graph.name)
        pools: dict[str, str] = {}
        for s in graph.workers():
            if s.dynamo_namespace_in(k8s_namespace, graph.name) != ns:
                continue
            pool = "prefill" if s.sub_component_type == "prefill" else "decode"
            if pool in pools:
                warnings.append(
                    f"{planner.name}: both {pools[pool]} and {s.name} are the {pool} pool of namespace {ns}; "
                    f"the planner's decisions apply to {pools[pool]} only"
                )
                continue
            pools[pool] = s.name
        out.append(ScaledPools(planner.name, ns, pools))
    return out


def _plan_process(
    graph: Graph,
    service: Service,
    replica: int,
    port: int,
    run_dir: Path,
    k8s_namespace: str,
    base: dict[str, str],
    secret_env: dict[str, str] | None,
    here: Path,
) -> Process:
    where = f"{service.name}[{replica}]"
    warnings: list[str] = []
    replica_dir = run_dir / f"{dns_label(service.name)}-{replica}"
    tmp_dir = replica_dir / "tmp"
    pod = {
        "POD_IP": "127.0.0.1",
        "POD_NAME": f"{graph.name}-{dns_label(service.name)}-{replica}",
        "POD_NAMESPACE": k8s_namespace,
    }
    env = dict(base)
    if service.env_from_secret and secret_env is not None:
        env.update(secret_env)
    injected = [EnvVar("DYN_NAMESPACE", service.dynamo_namespace_in(k8s_namespace, graph.name))]
    if service.is_frontend:
        injected.append(EnvVar("DYN_HTTP_PORT", str(port)))
        injected += graph.frontend_env(k8s_namespace)
    else:
        injected.append(EnvVar("DYN_SYSTEM_PORT", str(port)))
    injected += [EnvVar(k, v) for k, v in pod.items()]
    written = [
        EnvVar(e["name"], e.get("value"), e.get("valueFrom")) for e in service.main.raw.get("env") or []
    ]
    for var in merge_envs(injected, graph.envs, service.envs, written):
        value = _env_value(var, pod, where, warnings)
        if value is not None:
            env[var.name] = expand_var_refs(value, env)
    # The runner owns the ports: a manifest's own value would collide between replicas.
    env["DYN_HTTP_PORT" if service.is_frontend else "DYN_SYSTEM_PORT"] = str(port)

    words = service.main.command + service.main.args
    if not words:
        raise SpecError(
            f"service {service.name} has no extraPodSpec.mainContainer.command or args: a pod would run "
            "the image's entrypoint, which the local runner cannot know"
        )
    argv = [rewrite_tmp(expand_var_refs(w, env), tmp_dir) for w in words]
    if service.is_frontend:
        argv = [_HTTP_PORT_FLAG.sub(lambda m: m.group(1) + str(port), w) for w in argv]
        if "--http-port" in argv:
            idx = argv.index("--http-port")
            if idx + 1 < len(argv):
                argv[idx + 1] = str(port)

    cwd = here
    if service.main.working_dir:
        wd = Path(service.main.working_dir)
        if wd.is_dir():
            cwd = wd
        else:
            warnings.append(f"{where}: workingDir {wd} does not exist here; running in {here}")
    probe = local_probe(service.probes().get("readiness"), port, service.component_type, tmp_dir)
    return Process(
        service=service.name,
        replica=replica,
        component_type=service.component_type,
        argv=argv,
        env=env,
        cwd=cwd,
        tmp_dir=tmp_dir,
        log_path=replica_dir / "output.log",
        port=port,
        readiness=probe,
        warnings=warnings,
    )
