"""``python3 -m dynamo.sglang --model-path MODEL [SGLang server args…]``: the SGLang engine worker.

Journey: frontend -> request plane -> **this worker** (SGLang ``Engine`` in-process, token ids in,
token ids out) -> back; ``SglangEngine`` on the worker base (``dynamo.worker.run_worker``), which
registers the card (KV block size = the page size; a prefill worker's bootstrap address), relays
SGLang's KV events and load, serves ``/health``, ``/live`` and ``/metrics`` on ``DYN_SYSTEM_PORT``
and logs ``SglangWorker … initialized`` when ready. Prefill workers (``--disaggregation-mode
prefill``) register under component ``prefill``; decode workers pick a prefill worker for every
request (``dynamo.worker.decode``).
"""

from __future__ import annotations

from dynamo.sglang.engine import SglangEngine
from dynamo.worker import run_worker


def main(argv: list[str] | None = None) -> None:
    run_worker(SglangEngine, argv)
