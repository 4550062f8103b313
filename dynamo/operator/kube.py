"""A small asyncio Kubernetes API client for the objects the operator owns.

Credentials come from the same ``kopf.ConnectionInfo`` kopf logs in with, so the operator and its
framework talk to one API server as one identity. Only JSON and merge-patch are used.
"""

from __future__ import annotations

import json
import logging
import ssl
import tempfile
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import kopf

# One Kubernetes REST vocabulary for the operator and the planner's connector (the planner sits below).
from dynamo.planner.kube_api import KubeApiError as ApiError
from dynamo.planner.kube_api import resource_path

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"

# (apiVersion, kind) -> plural, for the kinds the operator reads or writes.
PLURALS: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("v1", "Secret"): "secrets",
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkersets",
    ("nvidia.com/v1alpha1", "DynamoGraphDeployment"): "dynamographdeployments",
    ("nvidia.com/v1alpha1", "DynamoGraphDeploymentRequest"): "dynamographdeploymentrequests",
    ("nvidia.com/v1beta1", "DynamoGraphDeploymentRequest"): "dynamographdeploymentrequests",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "ConfigMap"): "configmaps",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("batch/v1", "Job"): "jobs",
}


def object_path(obj: dict[str, Any], with_name: bool = True) -> str:
    """The API path of an object from its ``apiVersion``, ``kind`` and metadata."""
    key = (obj["apiVersion"], obj["kind"])
    if key not in PLURALS:
        raise ValueError(f"the operator does not manage {key[1]} ({key[0]})")
    meta = obj.get("metadata") or {}
    return resource_path(key[0], PLURALS[key], meta.get("namespace"), meta.get("name") if with_name else None)


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return False
    if info.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        cadata = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
        ctx = ssl.create_default_context(cafile=info.ca_path, cadata=cadata)  # type: ignore[arg-type]
    cert, key = info.certificate_path, info.private_key_path
    with tempfile.TemporaryDirectory() as tmp:
        if info.certificate_data:
            cert = f"{tmp}/cert.pem"
            with open(cert, "wb") as f:
                data = info.certificate_data
                f.write(data if isinstance(data, bytes) else data.encode())
        if info.private_key_data:
            key = f"{tmp}/key.pem"
            with open(key, "wb") as f:
                data = info.private_key_data
                f.write(data if isinstance(data, bytes) else data.encode())
        if cert:
            ctx.load_cert_chain(cert, key)  # type: ignore[arg-type]
    return ctx


class KubeClient:
    """JSON requests to one API server. ``relogin`` is called once on HTTP 401 (rotated tokens)."""

    def __init__(
        self, info: kopf.ConnectionInfo, relogin: Callable[[], kopf.ConnectionInfo] | None = None
    ) -> None:
        self._info = info
        self._relogin = relogin
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._info.token:
            headers["Authorization"] = f"{self._info.scheme or 'Bearer'} {self._info.token}"
        return headers

    async def _ensure(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=_ssl_context(self._info))
            auth = None
            if self._info.username and self._info.password:
                auth = aiohttp.BasicAuth(self._info.username, self._info.password)
            self._session = aiohttp.ClientSession(
                base_url=self._info.server.rstrip("/") + "/",
                connector=connector,
                auth=auth,
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        _retry: bool = True,
    ) -> dict[str, Any] | None:
        """One API call; ``None`` for 404 on reads and deletes, the decoded JSON otherwise."""
        session = await self._ensure()
        url = path.lstrip("/") + (f"?{urlencode(query)}" if query else "")
        headers = self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with session.request(method, url, data=data, headers=headers) as resp:
            text = await resp.text()
            if resp.status == 401 and _retry and self._relogin is not None:
                log.info("API server answered 401; logging in again")
                self._info = self._relogin()
                await self.close()
                return await self.request(method, path, body, content_type, query, _retry=False)
            if resp.status == 404 and method in ("GET", "DELETE"):
                return None
            if resp.status >= 300:
                raise ApiError(resp.status, method, path, text)
            return json.loads(text) if text else {}

    async def get(self, path: str) -> dict[str, Any] | None:
        return await self.request("GET", path)

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", path, query=query)
        return list((result or {}).get("items") or [])

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body) or {}

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, patch, content_type=MERGE_PATCH) or {}

    async def delete(self, path: str) -> None:
        await self.request("DELETE", path, query={"propagationPolicy": "Background"})
