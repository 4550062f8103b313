"""A small asyncio client for the Kubernetes API, as a pod's service account sees it.

Contract: ``KubeApi.from_environment()`` talks to ``DYN_KUBE_API_SERVER`` when it is set (a plain
URL, no credentials: development and the emulator tests), else to the cluster the pod runs in
(``KUBERNETES_SERVICE_HOST``/``_PORT``, the service account's token, re-read before each request
because bound tokens rotate, and its CA). Only JSON and JSON merge patch. A non-2xx answer raises
``KubeApiError`` with the server's message; ``get`` answers ``None`` for 404.

Used by the planner's Kubernetes connector (patch a DGD's replicas) and the profiler (publish its
results in a ConfigMap): beside the request path, never on it.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

API_SERVER_ENV = "DYN_KUBE_API_SERVER"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"


class KubeApiError(Exception):
    """A non-2xx answer from the API server (``status``; the message is the server's)."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        try:
            message = json.loads(body).get("message") or body
        except (ValueError, AttributeError):
            message = body
        self.message = str(message)
        super().__init__(f"{method} {path}: HTTP {status}: {self.message}")


def resource_path(
    api_version: str,
    plural: str,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """``/apis/nvidia.com/v1alpha1/namespaces/ns/dynamographdeployments/name`` and friends."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = base + (f"/namespaces/{quote(namespace)}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


def pod_namespace(environ: Mapping[str, str] | None = None) -> str | None:
    """The namespace this process runs in: ``POD_NAMESPACE``, else the service account's."""
    env = os.environ if environ is None else environ
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    try:
        return (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or None
    except OSError:
        return None


class KubeApi:
    """JSON requests to one API server."""

    def __init__(self, server: str, token_file: Path | None = None, ca_file: Path | None = None) -> None:
        self.server = server.rstrip("/")
        self._token_file = token_file
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> KubeApi:
        """``DYN_KUBE_API_SERVER`` if set, else the in-cluster API as the pod's service account
        (``ValueError`` saying so when neither is there)."""
        env = os.environ if environ is None else environ
        if env.get(API_SERVER_ENV):
            return cls(env[API_SERVER_ENV])
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        token = SERVICE_ACCOUNT_DIR / "token"
        if not host or not port or not token.is_file():
            raise ValueError(
                "not in a Kubernetes pod (no KUBERNETES_SERVICE_HOST or service account token) and "
                f"{API_SERVER_ENV} is not set: cannot reach the Kubernetes API"
            )
        if ":" in host:  # IPv6
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", token_file=token, ca_file=SERVICE_ACCOUNT_DIR / "ca.crt")

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        return ssl.create_default_context(cafile=str(self._ca_file) if self._ca_file else None)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._token_file is not None:
            headers["Authorization"] = f"Bearer {self._token_file.read_text().strip()}"
        return headers

    async def _ensure(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl()), timeout=aiohttp.ClientTimeout(total=30)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any] | None:
        """One call; ``None`` for a 404 on GET, the decoded JSON otherwise."""
        session = await self._ensure()
        headers = self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with session.request(method, self.server + path, data=data, headers=headers) as resp:
            text = await resp.text()
            if resp.status == 404 and method == "GET":
                return None
            if resp.status >= 300:
                raise KubeApiError(resp.status, method, path, text)
            return json.loads(text) if text else {}

    async def get(self, path: str) -> dict[str, Any] | None:
        return await self.request("GET", path)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body) or {}

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, patch, content_type=MERGE_PATCH) or {}
