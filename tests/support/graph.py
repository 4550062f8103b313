"""Start a frontend and workers as real processes, the way a user would."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tests.support.procs import ManagedProcess, free_port, http_ok, wait_until


def discovery_env(
    backend: str, etcd_endpoint: str | None = None, nats_url: str | None = None, ttl: float = 2.0
) -> dict[str, str]:
    """Environment for processes of one test graph."""
    env = {"DYN_DISCOVERY_BACKEND": backend, "DYN_DISCOVERY_TTL": str(ttl), "DYN_LOG": "info"}
    if etcd_endpoint:
        env["ETCD_ENDPOINTS"] = etcd_endpoint
    if nats_url:
        env["NATS_SERVER"] = nats_url
        env["DYN_EVENT_PLANE"] = "nats"
    return env


class Frontend:
    """A ``python -m dynamo.frontend`` process on a free port."""

    def __init__(self, log_dir: Path, env: dict[str, str], *args: str, name: str = "frontend") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = ManagedProcess.python(
            name,
            ["-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(self.port), *args],
            log_dir,
            env,
        )
        wait_until(lambda: self._check_alive() and http_ok(f"{self.url}/live"), 30, "frontend /live")

    def _check_alive(self) -> bool:
        if not self.proc.alive():
            raise RuntimeError(f"frontend exited:\n{self.proc.tail()}")
        return True

    def health(self) -> dict:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read())

    def wait_for_instances(self, count: int, timeout: float = 30) -> None:
        wait_until(
            lambda: len(self.health().get("instances", [])) == count,
            timeout,
            f"{count} instances in the frontend's /health",
        )

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self) -> None:
        self.proc.stop()


def start_mocker(
    log_dir: Path, env: dict[str, str], model_dir: Path, name: str, *args: str, system_port: int | None = None
) -> ManagedProcess:
    """A mocker worker process, returned once it logged that it is initialized."""
    env = dict(env)
    if system_port is not None:
        env["DYN_SYSTEM_PORT"] = str(system_port)
    proc = ManagedProcess.python(
        name, ["-m", "dynamo.mocker", "--model-path", str(model_dir), *args], log_dir, env
    )
    proc.wait_for_log("initialized", timeout=60)
    return proc


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def get_json(url: str) -> dict:
    """GET ``url`` and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def complete(frontend_url: str, model: str, count: int, max_tokens: int = 3) -> None:
    """``count`` completions of ``model`` through the frontend, each checked to produce ``max_tokens``."""
    body = json.dumps(
        {"model": model, "prompt": "The capital of France is", "max_tokens": max_tokens}
    ).encode()
    for _ in range(count):
        req = urllib.request.Request(
            f"{frontend_url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
        assert answer["usage"]["completion_tokens"] == max_tokens, answer


def worker_completed(system_port: int) -> float:
    """Requests a worker completed, from its status server's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{system_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return metric_value(text, "dynamo_worker_requests_total", outcome="completed")
