"""Discovery: backends (etcd, file, mem) behind one key-value interface (``base.Discovery``), the
key layout of what workers register (``registry``) and typed watches of it (``watch``)."""

from __future__ import annotations

from dynamo.runtime.config import RuntimeConfig
from dynamo.runtime.discovery.base import Discovery, WatchEvent, diff_views


def create_discovery(config: RuntimeConfig) -> Discovery:
    """The backend named by ``config.discovery_backend`` (not yet started)."""
    if config.discovery_backend == "etcd":
        from dynamo.runtime.discovery.etcd import EtcdDiscovery

        return EtcdDiscovery(config.etcd_endpoints, ttl=config.discovery_ttl)
    if config.discovery_backend == "file":
        from dynamo.runtime.discovery.file import FileDiscovery

        return FileDiscovery(config.file_discovery_dir, ttl=config.discovery_ttl)
    from dynamo.runtime.discovery.mem import MemDiscovery

    return MemDiscovery(ttl=config.discovery_ttl)


__all__ = ["Discovery", "WatchEvent", "create_discovery", "diff_views"]
