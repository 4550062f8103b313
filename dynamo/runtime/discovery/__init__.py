"""Discovery: backends (etcd, file, mem) behind one key-value interface (``base.Discovery``), the
key layout of what workers register (``registry``) and typed watches of it (``watch``)."""

from __future__ import annotations

import os

from dynamo.runtime.config import RuntimeConfig
from dynamo.runtime.discovery.base import Discovery, WatchEvent, diff_views

DEFAULT_ETCD_CONNECT_WAIT = 60.0  # seconds a starting process waits for etcd (DYN_ETCD_CONNECT_WAIT)


def create_discovery(config: RuntimeConfig) -> Discovery:
    """The backend named by ``config.discovery_backend`` (not yet started)."""
    if config.discovery_backend == "etcd":
        from dynamo.runtime.discovery.etcd import EtcdDiscovery

        wait = float(os.environ.get("DYN_ETCD_CONNECT_WAIT") or DEFAULT_ETCD_CONNECT_WAIT)
        return EtcdDiscovery(config.etcd_endpoints, ttl=config.discovery_ttl, connect_wait=wait)
    if config.discovery_backend == "file":
        from dynamo.runtime.discovery.file import FileDiscovery

        return FileDiscovery(config.file_discovery_dir, ttl=config.discovery_ttl)
    from dynamo.runtime.discovery.mem import MemDiscovery

    return MemDiscovery(ttl=config.discovery_ttl)


__all__ = ["Discovery", "WatchEvent", "create_discovery", "diff_views"]
