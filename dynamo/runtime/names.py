"""Names of things in a Dynamo deployment: namespace -> component -> endpoint.

Addressed as ``dyn://<namespace>.<component>.<endpoint>``; every serving process has a random
64-bit instance id (shown in hex) that survives lease re-creation, and every request a random id.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from dataclasses import dataclass

DEFAULT_NAMESPACE = "dynamo"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def default_namespace() -> str:
    """The Dynamo namespace from ``DYN_NAMESPACE``, else ``dynamo``."""
    return os.environ.get("DYN_NAMESPACE") or DEFAULT_NAMESPACE


def new_instance_id() -> int:
    """A random non-zero 63-bit instance id."""
    return secrets.randbits(63) or 1


class _RandomPool:
    """Random bytes drawn from the OS a page at a time and handed out in pieces (a forked child
    drops what it inherited, so that parent and child never hand out the same bytes)."""

    PAGE = 4096

    def __init__(self) -> None:
        self._drop()
        os.register_at_fork(after_in_child=self._drop)

    def _drop(self) -> None:
        self._lock = threading.Lock()  # a new one: another thread may have held it at the fork
        self._pool = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        with self._lock:
            at = self._at
            if at + n > len(self._pool):
                self._pool, at = os.urandom(self.PAGE), 0
            self._at = at + n
            return self._pool[at : at + n]


_random = _RandomPool()


def new_request_id() -> str:
    """A random request id of 32 hex digits (what ``uuid4().hex`` gives, without the version bits):
    one system call for randomness per 256 ids instead of one per request."""
    return _random.take(16).hex()


def validate_name(kind: str, value: str) -> str:
    """Check one path segment (letters, digits, ``_`` and ``-``)."""
    if not _NAME.match(value):
        raise ValueError(f"invalid {kind} name {value!r}: use letters, digits, '_' or '-'")
    return value


@dataclass(frozen=True, slots=True)
class EndpointId:
    """A fully qualified endpoint name."""

    namespace: str
    component: str
    name: str

    def __post_init__(self) -> None:
        validate_name("namespace", self.namespace)
        validate_name("component", self.component)
        validate_name("endpoint", self.name)

    @classmethod
    def parse(cls, text: str, default_namespace_: str | None = None) -> EndpointId:
        """Parse ``dyn://ns.component.endpoint`` (the ``dyn://`` prefix is optional;
        ``component.endpoint`` takes the default namespace)."""
        body = text.removeprefix("dyn://")
        parts = body.split(".")
        if len(parts) == 2:
            return cls(default_namespace_ or default_namespace(), parts[0], parts[1])
        if len(parts) != 3:
            raise ValueError(f"invalid endpoint {text!r}: expected dyn://<namespace>.<component>.<endpoint>")
        return cls(parts[0], parts[1], parts[2])

    @property
    def path(self) -> str:
        """``ns/component/endpoint``, as used in discovery keys."""
        return f"{self.namespace}/{self.component}/{self.name}"

    def __str__(self) -> str:
        return f"dyn://{self.namespace}.{self.component}.{self.name}"
