"""One integer per routing target: a worker instance id, plus its data-parallel rank when it has one.

Journey: route. The KV router keys everything (indexer, active load, selection) by this int. A worker
without data parallelism (``dp_rank == 0``) is keyed by its instance id itself, so the frontend's
instance ids are valid keys as they are; rank ``r > 0`` of instance ``i`` is ``(r << 64) | i``.
"""

from __future__ import annotations

_ID_BITS = 64
_ID_MASK = (1 << _ID_BITS) - 1


def worker_key(worker_id: int, dp_rank: int = 0) -> int:
    """The routing key of ``worker_id``'s data-parallel rank ``dp_rank``."""
    if worker_id < 0 or worker_id > _ID_MASK:
        raise ValueError(f"worker id {worker_id} is not an unsigned 64-bit instance id")
    if dp_rank == 0:
        return worker_id
    if dp_rank < 0:
        raise ValueError(f"negative dp_rank {dp_rank}")
    return (dp_rank << _ID_BITS) | worker_id


def split_worker_key(key: int) -> tuple[int, int]:
    """``(worker_id, dp_rank)`` of a routing key."""
    return key & _ID_MASK, key >> _ID_BITS


def format_worker_key(key: int) -> str:
    """A worker key for logs: the instance id in hex, with ``/rank`` when the rank is not 0."""
    worker_id, dp_rank = split_worker_key(key)
    return f"{worker_id:x}" if dp_rank == 0 else f"{worker_id:x}/{dp_rank}"
