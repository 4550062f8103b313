"""Choosing a worker instance for a request (journey: preprocess -> **route** -> request plane).

``InstanceRouter`` (``instances``) keeps one pool's live instances and failover state and asks its
``RoutingPolicy`` (``policy``) to choose. One module per policy: ``round_robin``, ``random``, ``kv``;
``factory.create_policy`` builds the one a ``--router-mode`` names. To add a policy: subclass
``RoutingPolicy`` in a module of its own, list it in ``factory.POLICIES`` and add its name to the
``--router-mode`` choices (``dynamo.frontend.args.ROUTER_MODES``).
"""

from dynamo.frontend.routing.factory import POLICIES, create_policy
from dynamo.frontend.routing.instances import UNREACHABLE_COOLDOWN, InstanceRouter
from dynamo.frontend.routing.kv import KvPolicy
from dynamo.frontend.routing.policy import Choice, RoutingPolicy
from dynamo.frontend.routing.random import RandomPolicy
from dynamo.frontend.routing.round_robin import RoundRobinPolicy
from dynamo.router import AllWorkersBusy, NoWorkers

__all__ = [
    "POLICIES",
    "UNREACHABLE_COOLDOWN",
    "AllWorkersBusy",
    "Choice",
    "InstanceRouter",
    "KvPolicy",
    "NoWorkers",
    "RandomPolicy",
    "RoundRobinPolicy",
    "RoutingPolicy",
    "create_policy",
]
