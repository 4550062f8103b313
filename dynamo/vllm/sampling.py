"""Our ``PreprocessedRequest`` -> vLLM ``SamplingParams``, and vLLM's logprobs -> ours.

Journey: request plane -> worker handler -> ``VllmEngine.generate`` -> **``build_sampling_params``**
(sampling, stop and output options; ``guided`` as vLLM's ``StructuredOutputsParams``; ``logit_bias``;
``prompt_logprobs``) -> ``AsyncLLM.generate`` -> ``RequestOutput`` -> **``convert_logprobs`` /
``convert_prompt_logprobs``** -> ``EngineOutput`` -> back over the request plane.

vLLM validates what this builds when the request is added (``SamplingParams.verify``): a schema,
regex or grammar its structured-output backend cannot compile, a ``logit_bias`` id outside the
vocabulary or more logprobs than ``--max-logprobs`` raise ``VLLMValidationError`` there, which
the engine turns into an ``invalid_request`` error chunk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vllm import SamplingParams
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from dynamo.llm.protocols import GuidedDecoding, PreprocessedRequest, TokenLogprob
from dynamo.worker.sampling import given_options, stop_token_ids

__all__ = [
    "build_sampling_params",
    "convert_logprobs",
    "convert_prompt_logprobs",
    "structured_outputs",
]

# SamplingOptions fields vLLM's SamplingParams takes under the same names.
_SAMPLING_OPTIONS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
)


def structured_outputs(guided: GuidedDecoding) -> StructuredOutputsParams:
    """``guided`` as vLLM's structured-outputs constraint (exactly one kind; vLLM raises otherwise)."""
    kind = guided.kind()
    if kind == "json":
        return StructuredOutputsParams(json=guided.json)
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "regex":
        return StructuredOutputsParams(regex=guided.regex)
    if kind == "choice":
        return StructuredOutputsParams(choice=list(guided.choice or []))
    return StructuredOutputsParams(grammar=guided.grammar)


def build_sampling_params(req: PreprocessedRequest, *, prefill: bool = False) -> SamplingParams:
    """Map our sampling/stop/output options to vLLM ``SamplingParams`` (token ids in, deltas out).

    ``prefill``: compute the prompt's KV and one token for a decode worker to continue
    (``max_tokens=1``, ``kv_transfer_params.do_remote_decode``). Raises ``ValueError`` (vLLM's
    ``VLLMValidationError``) for options vLLM refuses before it sees the model.
    """
    stop = req.stop
    kwargs: dict[str, Any] = {
        "output_kind": RequestOutputKind.DELTA,
        "detokenize": False,
        "max_tokens": stop.max_tokens,  # None: up to the context length
        "min_tokens": stop.min_tokens,
        "ignore_eos": stop.ignore_eos,
        "logprobs": req.output.logprobs,
        "prompt_logprobs": req.output.prompt_logprobs,
    }
    stop_ids = stop_token_ids(req)
    if stop_ids:
        kwargs["stop_token_ids"] = stop_ids
    kwargs.update(given_options(req.sampling, _SAMPLING_OPTIONS))
    if req.guided is not None:
        kwargs["structured_outputs"] = structured_outputs(req.guided)

    kv_params = dict(req.kv_transfer_params) if req.kv_transfer_params else None
    if prefill:
        kv_params = {**(kv_params or {}), "do_remote_decode": True}
        kwargs["max_tokens"] = 1
        kwargs["min_tokens"] = 0
    if kv_params is not None:
        kwargs["extra_args"] = {"kv_transfer_params": kv_params}
    return SamplingParams(**kwargs)


def _token_logprob(token_id: int, position: Mapping[int, Logprob], num_top: int) -> TokenLogprob:
    """One position of vLLM's ``{token_id: Logprob(logprob, rank)}``: the chosen (or prompt)
    token's logprob plus the ``num_top`` best alternatives in rank order."""
    chosen = position.get(token_id)
    ranked = sorted(
        ((tid, lp) for tid, lp in position.items() if lp.rank is not None and lp.rank <= num_top),
        key=lambda item: item[1].rank or 0,
    )
    return TokenLogprob(
        token_id=token_id,
        logprob=float(chosen.logprob) if chosen is not None else float("-inf"),
        top=[(tid, float(lp.logprob)) for tid, lp in ranked],
    )


def convert_logprobs(completion: CompletionOutput, num_top: int) -> list[TokenLogprob] | None:
    """The sampled tokens' logprobs of one ``CompletionOutput`` delta (None when not asked)."""
    if completion.logprobs is None:
        return None
    return [
        _token_logprob(token_id, position, num_top)
        for token_id, position in zip(completion.token_ids, completion.logprobs, strict=False)
        if position is not None
    ]


def convert_prompt_logprobs(
    prompt_ids: Sequence[int], prompt_logprobs: Sequence[Mapping[int, Logprob] | None], num_top: int
) -> list[TokenLogprob | None]:
    """vLLM's ``RequestOutput.prompt_logprobs`` -> one entry per prompt token; the first (and any
    position vLLM leaves empty) is None."""
    return [
        _token_logprob(token_id, position, num_top) if position is not None and index > 0 else None
        for index, (token_id, position) in enumerate(zip(prompt_ids, prompt_logprobs, strict=False))
    ]
