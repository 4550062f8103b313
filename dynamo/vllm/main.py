"""``python -m dynamo.vllm --model MODEL [vLLM engine flags…]``: the vLLM engine worker.

Journey: frontend -> request plane -> **this worker** (vLLM ``AsyncLLM`` in-process, token ids in,
token ids out) -> back; ``VllmEngine`` on the worker base (``dynamo.worker.run_worker``), which
registers the card, relays KV events and load, serves ``/health``, ``/live`` and ``/metrics`` (with
vLLM's own metrics) on ``DYN_SYSTEM_PORT`` and logs ``VllmWorker … initialized`` when ready.
"""

from __future__ import annotations

from dynamo.worker import run_worker


def main(argv: list[str] | None = None) -> None:
    from dynamo.vllm.args import parse_args

    config = parse_args(argv)  # a missing vLLM ends here, with one line that says how to install it
    from dynamo.vllm.engine import VllmEngine

    run_worker(VllmEngine, config=config)
