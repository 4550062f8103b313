"""Scaling connectors: how a planner's decision reaches whatever runs the workers.

``ScalingConnector`` is the interface (``apply`` one ``ScalingDecision``; ``close``). Built:
``VirtualConnector`` (``environment: virtual``), which publishes the decision in the graph's
key-value store (``DistributedRuntime.store``) under ``decision_key(namespace)``, for another party
to apply; ``python3 -m dynamo.deploy run`` reads it there (``read_decision``) and starts or drains
worker processes. ``KubernetesConnector`` (``environment: kubernetes``, ``dynamo.planner.kubernetes``)
patches the replicas of the planner's own DGD's services, which the operator reconciles.

A decision names pools (``prefill``, ``decode``), not services: the applying party maps them to its
services (a DGD service's ``subComponentType``; aggregated workers are the decode pool). Each one
carries a generation that only grows, and expires from the store ``DECISION_TTL_INTERVALS``
adjustment intervals after it was written (a planner that stopped stops steering).

Journey: observe -> ... -> publish -> **connector** -> the runner (or operator) applies it.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Mapping

import msgspec

from dynamo.planner.config import ConfigError, PlannerConfig
from dynamo.runtime.discovery.registry import store_key
from dynamo.runtime.store import KeyValueStore

log = logging.getLogger(__name__)

DECISION_KIND = "planner"
DECISION_ITEM = "decision"
DECISION_TTL_INTERVALS = 10
MIN_DECISION_TTL = 60.0


class ScalingDecision(msgspec.Struct, kw_only=True):
    """Replicas per pool, as the planner wants them now."""

    namespace: str
    generation: int
    targets: dict[str, int]  # pool (prefill | decode) -> replicas
    ready: dict[str, int] = {}  # what was ready when it was decided
    at: float = 0.0  # unix time of the decision
    reason: str = ""


_decoder = msgspec.json.Decoder(ScalingDecision)


def decision_key(namespace: str) -> str:
    """Where the decision for the graph in ``namespace`` lives in the store."""
    return store_key(namespace, DECISION_KIND, DECISION_ITEM)


async def read_decision(store: KeyValueStore, namespace: str) -> ScalingDecision | None:
    """The live decision for ``namespace`` (None when there is none, it expired, or is malformed)."""
    raw = await store.get(decision_key(namespace))
    if raw is None:
        return None
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        log.warning("ignoring a malformed planner decision for %s: %s", namespace, exc)
        return None


class ScalingConnector(abc.ABC):
    """Applies the planner's decisions."""

    @abc.abstractmethod
    async def apply(self, decision: ScalingDecision) -> None:
        """Make ``decision`` the graph's wanted state (raises on failure; the planner logs and retries
        next interval)."""

    async def close(self) -> None:  # noqa: B027 - connectors without connections have nothing to close
        """Release what the connector holds."""


class VirtualConnector(ScalingConnector):
    """Publishes decisions in the graph's store for another party to apply."""

    def __init__(self, store: KeyValueStore, ttl: float) -> None:
        self.store = store
        self.ttl = ttl

    async def apply(self, decision: ScalingDecision) -> None:
        if not decision.at:
            decision.at = time.time()
        await self.store.put(decision_key(decision.namespace), msgspec.json.encode(decision), self.ttl)


def create_connector(
    config: PlannerConfig, store: KeyValueStore, environ: Mapping[str, str] | None = None
) -> ScalingConnector:
    """The connector of ``config.environment`` (``environ``: where a Kubernetes connector finds its
    DGD and API server; the process environment by default)."""
    if config.environment == "virtual":
        return VirtualConnector(store, ttl=max(MIN_DECISION_TTL, DECISION_TTL_INTERVALS * config.interval))
    if config.environment == "kubernetes":
        from dynamo.planner.kubernetes import KubernetesConnector

        return KubernetesConnector.from_environment(environ)
    raise ConfigError(
        f"environment {config.environment!r}: its scaling connector is not built yet (only 'virtual' and 'kubernetes' are)"
    )
