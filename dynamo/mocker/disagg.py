"""Disaggregated prefill/decode for the mocker: what a prefill worker hands to a decode worker.

Journey: frontend -> prefill worker (``prefill_only`` or ``--is-prefill-worker``) runs the prefill
and returns one token with ``kv_transfer_params`` -> frontend -> decode worker, which reads them
here, waits the simulated transfer time instead of computing the prefill, then decodes.
"""

from __future__ import annotations

import logging
from typing import Any

from dynamo.mocker.sequence import Sequence

logger = logging.getLogger(__name__)


def make_transfer_params(worker_id: int, dp_rank: int, block_size: int, seq: Sequence) -> dict[str, Any]:
    """``kv_transfer_params`` describing the prompt KV a prefill worker computed for ``seq``."""
    n_full = seq.prompt_len // block_size
    return {
        "mock_worker": worker_id,
        "dp_rank": dp_rank,
        "num_tokens": seq.prompt_len,
        "block_size": block_size,
        "block_hashes": seq.seq_hashes[:n_full],
    }


def is_prefill_request(params: Any) -> bool:
    """vLLM-style prefill marker: ``{"do_remote_decode": true}`` asks for a prefill-only run."""
    return isinstance(params, dict) and bool(params.get("do_remote_decode"))


def accept_transfer(request_id: str, params: Any, prompt_len: int) -> dict[str, Any] | None:
    """Validate the params a decode worker received; None (with the reason logged) means fall back
    to a local prefill."""
    if not isinstance(params, dict):
        logger.warning(
            "request %s: kv_transfer_params is %s, not a mapping; prefilling locally",
            request_id,
            type(params).__name__,
        )
        return None
    num_tokens = params.get("num_tokens")
    if num_tokens is not None and num_tokens != prompt_len:
        # E.g. the frontend appended the prefill's first token to the prompt: still a transfer.
        logger.debug(
            "request %s: prefill KV covers %r tokens, prompt has %d", request_id, num_tokens, prompt_len
        )
    return params
