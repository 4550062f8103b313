"""Kubernetes probes, run locally: ``exec`` as a subprocess in the replica's environment,
``httpGet`` against 127.0.0.1 (any status 200-399 passes), ``tcpSocket`` as a connect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeTiming:
    """The probe's schedule, with Kubernetes' defaults."""

    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def of(cls, probe: dict[str, Any]) -> ProbeTiming:
        return cls(
            initial_delay=float(probe.get("initialDelaySeconds", 0)),
            period=float(probe.get("periodSeconds", 10)),
            timeout=float(probe.get("timeoutSeconds", 1)),
            success_threshold=int(probe.get("successThreshold", 1)),
            failure_threshold=int(probe.get("failureThreshold", 3)),
        )


async def _exec(command: list[str], env: dict[str, str], cwd: Path, timeout: float) -> bool:
    proc = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return await asyncio.wait_for(proc.wait(), timeout) == 0
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return False


async def _http_get(get: dict[str, Any], timeout: float) -> bool:
    host = get.get("host") or "127.0.0.1"
    scheme = str(get.get("scheme") or "HTTP").lower()
    path = str(get.get("path") or "/")
    url = f"{scheme}://{host}:{get.get('port')}{path if path.startswith('/') else '/' + path}"
    headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or [] if "name" in h}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, headers=headers, ssl=False) as resp,
        ):
            return 200 <= resp.status < 400
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def _tcp(tcp: dict[str, Any], timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(tcp.get("host") or "127.0.0.1", int(tcp["port"])), timeout
        )
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def check(probe: dict[str, Any], env: dict[str, str], cwd: Path) -> bool:
    """Run a probe once."""
    timeout = ProbeTiming.of(probe).timeout
    if "exec" in probe:
        command = [str(c) for c in probe["exec"].get("command") or []]
        return bool(command) and await _exec(command, env, cwd, timeout)
    if "httpGet" in probe:
        return await _http_get(probe["httpGet"], timeout)
    if "tcpSocket" in probe:
        return await _tcp(probe["tcpSocket"], timeout)
    if "grpc" in probe:
        return await _tcp({"port": probe["grpc"].get("port")}, timeout)
    log.warning("probe has no exec, httpGet, tcpSocket or grpc action; counting it as passed")
    return True


def describe(probe: dict[str, Any] | None) -> str:
    """One line saying what a probe checks."""
    if probe is None:
        return "none (ready once started)"
    if "exec" in probe:
        return "exec " + " ".join(str(c) for c in probe["exec"].get("command") or [])
    if "httpGet" in probe:
        get = probe["httpGet"]
        return f"GET http://{get.get('host') or '127.0.0.1'}:{get.get('port')}{get.get('path') or '/'}"
    if "tcpSocket" in probe:
        return f"tcp {probe['tcpSocket'].get('port')}"
    return "unknown"
