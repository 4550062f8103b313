"""``python -m dynamo.vllm --model MODEL [vLLM engine flags…]``: the vLLM engine worker.

Journey: frontend -> request plane -> **this worker** (vLLM ``AsyncLLM`` in-process, token ids in,
token ids out) -> back; ``VllmEngine`` on the worker base (``dynamo.worker.run_worker``), which
registers the card, relays KV events and load, serves ``/health``, ``/live`` and ``/metrics`` (with
vLLM's own metrics) on ``DYN_SYSTEM_PORT`` and logs ``VllmWorker … initialized`` when ready.
With vLLM's pooling runner (``--runner pooling`` / ``--embedding-worker``) it is an embedding
worker instead (``dynamo.vllm.embedding``).
"""

from __future__ import annotations

import logging
import sys

from dynamo.runtime.logging import configure_logging
from dynamo.vllm.model_path import is_missing_local_path, missing_model_detail, model_argument
from dynamo.worker import run_worker

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    model = model_argument(args)
    if model is not None and is_missing_local_path(model):  # before vLLM's (slow) import
        configure_logging()
        log.error("vLLM engine failed to start: %s", missing_model_detail(model))
        raise SystemExit(1)
    from dynamo.vllm.args import parse_args

    config = parse_args(args)  # a missing vLLM ends here, with one line that says how to install it
    from dynamo.vllm.embedding import VllmEmbeddingEngine, pooling_config, runs_pooling
    from dynamo.vllm.engine import VllmEngine

    engine: type[VllmEngine] = VllmEngine
    if runs_pooling(config):  # vLLM's pooling runner: an embedding worker (/v1/embeddings)
        try:
            config = pooling_config(config)
        except ValueError as exc:  # a flag pooling cannot honour: bad settings, exit 2 as argparse does
            sys.stderr.write(f"python -m dynamo.vllm: error: {exc}\n")
            raise SystemExit(2) from None
        engine = VllmEmbeddingEngine
    run_worker(engine, config=config)
