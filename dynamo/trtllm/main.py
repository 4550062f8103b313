"""``python3 -m dynamo.trtllm --model-path MODEL [--extra-engine-args FILE.yaml] …``: the TensorRT-LLM worker.

Journey: frontend -> request plane -> **this worker** (TensorRT-LLM ``LLM`` in-process, token ids
in, token ids out) -> back; ``TrtllmEngine`` on the worker base (``dynamo.worker.run_worker``),
which registers the card (KV block size = ``tokens_per_block``), relays TensorRT-LLM's KV events
and load, serves ``/health``, ``/live`` and ``/metrics`` on ``DYN_SYSTEM_PORT`` and logs
``TrtllmWorker … initialized`` when ready. Prefill workers register under component ``prefill``;
decode workers pull a prefill worker's KV, call one themselves (decode_first) and prefill locally
when either fails (``dynamo.worker.decode``).
"""

from __future__ import annotations

from dynamo.trtllm.engine import TrtllmEngine
from dynamo.worker import run_worker


def main(argv: list[str] | None = None) -> None:
    run_worker(TrtllmEngine, argv)
