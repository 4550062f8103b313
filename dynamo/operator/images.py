"""Image pull secret discovery: match a container image's registry host against the registries
named in the namespace's docker-config secrets (``kubernetes.io/dockerconfigjson`` and the older
``kubernetes.io/dockercfg``)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
DOCKER_CONFIG_TYPES = ("kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg")


def normalize_registry(host: str) -> str:
    """Lower-case a registry host, drop any scheme and path, and fold Docker Hub's aliases."""
    text = host.strip()
    if "://" in text:
        text = urlsplit(text).netloc
    text = text.split("/", 1)[0].lower()
    return DOCKER_HUB if text in _DOCKER_HUB_ALIASES else text


def registry_host(image: str) -> str:
    """The registry an image reference pulls from (``nvcr.io/nvidia/x:1`` -> ``nvcr.io``;
    ``ubuntu:24.04`` -> ``docker.io``), following Docker's reference rules."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return normalize_registry(first)
    return DOCKER_HUB


def secret_registries(secret: Mapping[str, Any]) -> set[str]:
    """Registry hosts a docker-config secret holds credentials for (empty if it is not one)."""
    kind = secret.get("type")
    data = secret.get("data") or {}
    if kind == "kubernetes.io/dockerconfigjson":
        blob = data.get(".dockerconfigjson")
    elif kind == "kubernetes.io/dockercfg":
        blob = data.get(".dockercfg")
    else:
        return set()
    if not blob:
        return set()
    name = (secret.get("metadata") or {}).get("name", "?")
    try:
        config = json.loads(base64.b64decode(blob))
    except (binascii.Error, ValueError) as exc:
        log.warning("secret %s: cannot read its docker config: %s", name, exc)
        return set()
    auths = config.get("auths", {}) if kind == "kubernetes.io/dockerconfigjson" else config
    if not isinstance(auths, Mapping):
        return set()
    return {normalize_registry(str(host)) for host in auths}


def registry_index(secrets: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Map each registry host to the names of the docker-config secrets for it (sorted, stable)."""
    index: dict[str, set[str]] = {}
    for secret in secrets:
        name = (secret.get("metadata") or {}).get("name")
        if not name:
            continue
        for host in secret_registries(secret):
            index.setdefault(host, set()).add(str(name))
    return {host: sorted(names) for host, names in index.items()}


def secrets_for_image(image: str | None, index: Mapping[str, list[str]]) -> list[str]:
    """Names of the secrets whose registry matches ``image``'s."""
    if not image:
        return []
    return list(index.get(registry_host(image), []))
