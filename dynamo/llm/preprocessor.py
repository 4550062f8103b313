"""Preprocessing: a validated OpenAI request -> the tokenized ``PreprocessedRequest`` an engine runs.

Journey: HTTP -> parse (``dynamo.llm.openai``) -> **preprocess (here: chat template, tokenize,
sampling/stop mapping, context-length checks)** -> route -> request plane -> engine -> token ids
back -> detokenize (``make_detokenizer``) -> SSE.

One ``Preprocessor`` per served model, built from its deployment card and the card's files.
The result is a ``PreprocessedOutput``: the wire request plus what stays in the frontend for the
way back (stop strings, whether to keep them, prompt length, logprobs asked for).

Long prompts: inside ``inline_encode_limit(chars)`` (the frontend's event loop), ``encode`` raises
``EncodeTooLong`` rather than tokenize more than ``chars`` characters in all (every prompt and
message of the request) that the prefix cache does not hold; the caller then runs the preprocessing
again in a thread (``dynamo.frontend.stages.preprocess``).

Defaults: chat ``max_tokens`` = context length - prompt length; completions ``max_tokens`` = 16
(the OpenAI and vLLM default). Precedence for the extensions: top-level field, then ``nvext``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from msgspec.structs import replace as replace_struct
from tokenizers import Tokenizer

from dynamo.llm.chat_template import ChatTemplate
from dynamo.llm.detokenizer import Detokenizer
from dynamo.llm.errors import RequestError, bad_request
from dynamo.llm.guided import ToolPlan, guided_from, tool_plan
from dynamo.llm.model_card import ModelDeploymentCard
from dynamo.llm.openai import ChatCompletionRequest, CompletionRequest, _SamplingFields
from dynamo.llm.protocols import (
    GuidedDecoding,
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo.llm.token_cache import DEFAULT_MAX_BYTES, EncodeBudget, PrefixTokenCache
from dynamo.llm.token_ids import TokenIds, as_token_ids

log = logging.getLogger(__name__)

DETOKENIZER_PROMPT_TAIL = 8
REPLACEMENT_CHAR = "\ufffd"
TOKEN_TEXT_CONTEXT = 4  # preceding tokens a logprob's partial UTF-8 text is completed with (as vLLM)
_T = TypeVar("_T")  # prompt tokens handed to the detokenizer as left context
# What ``encode`` may still tokenize fresh in this context (None: any); see ``inline_encode_limit``.
_INLINE_BUDGET: ContextVar[EncodeBudget | None] = ContextVar("inline_encode_budget", default=None)


@contextmanager
def inline_encode_limit(chars: int | None) -> Iterator[None]:
    """Within this block, ``Preprocessor.encode`` raises ``EncodeTooLong`` instead of tokenizing
    more than ``chars`` characters in all that the prefix cache does not hold (``None``: no limit)."""
    token = _INLINE_BUDGET.set(None if chars is None else EncodeBudget(chars))
    try:
        yield
    finally:
        _INLINE_BUDGET.reset(token)


@dataclass(slots=True)
class PreprocessedOutput:
    """What ``preprocess_*`` returns.

    ``request`` goes to the router and an engine. The rest stays in the frontend: ``stop_strings``
    and ``include_stop_str_in_output`` for the detokenizer (engines only see stop token ids),
    ``prompt_len`` for usage, ``logprobs`` (``None``: not asked for; ``n``: ``n`` alternatives per
    token), ``backend_instance_id`` when the client pinned a worker (``nvext``).

    One per choice: ``n`` > 1 and a list of prompts fan out into several, ``index`` = prompt index
    * n + i (as vLLM numbers them). How the choice's text becomes the response:
    ``tool_mode`` ``auto`` runs ``tool_parser`` (when the card names one) over the text; ``required``
    (a JSON array of ``{"name", "parameters"}``) and ``named`` (the arguments object of ``tool_name``)
    were constrained by the engine and are turned into calls as such; ``reasoning_parser`` splits
    thinking first. Completions: ``echo_text`` is prepended (with ``prompt_logprobs`` entries when
    asked), and ``drop_output`` (echo with ``max_tokens`` 0) discards the one token generated.
    """

    request: PreprocessedRequest
    prompt_len: int
    stop_strings: list[str] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None
    backend_instance_id: int | None = None
    index: int = 0
    tool_mode: Literal["none", "auto", "required", "named"] = "none"
    tool_name: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_parser: str | None = None
    reasoning_parser: str | None = None
    echo_text: str | None = None
    prompt_logprobs: int | None = None
    drop_output: bool = False
    parallel_tool_calls: bool | None = None  # False: at most one call (auto keeps the first)
    thinking: bool = True  # False when the request turned thinking off (``enable_thinking``)
    prompt_index: int = 0  # which prompt of a list this choice continues (usage counts each once)


class Preprocessor:
    """Turns OpenAI requests for one model into ``PreprocessedRequest``s."""

    def __init__(
        self,
        card: ModelDeploymentCard,
        tokenizer: Tokenizer,
        chat_template: ChatTemplate | None,
        tool_chat_template: ChatTemplate | None = None,
        token_cache_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.card = card
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self._tool_template = tool_chat_template or chat_template
        self.context_length = card.context_length
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.token_cache = PrefixTokenCache.for_tokenizer(tokenizer, max_bytes=token_cache_bytes)
        # Whether encoding with special tokens adds any (a BOS/EOS post-processor), and if it only
        # puts fixed ids around the text, which: then the cache's ids go between them; else such
        # prompts (completions) are encoded whole, as the cache encodes without them.
        self._adds_specials = bool(
            tokenizer.encode("a", add_special_tokens=True).ids
            != tokenizer.encode("a", add_special_tokens=False).ids
        )
        self._special_wrap = _special_wrap(tokenizer) if self._adds_specials else None

    @classmethod
    def from_card(
        cls, card: ModelDeploymentCard, files: dict[str, bytes], token_cache_bytes: int = DEFAULT_MAX_BYTES
    ) -> Preprocessor:
        """Build from the card and its files (checked against the card's hashes first);
        ``token_cache_bytes`` bounds the tokenization prefix cache (0: none)."""
        card.verify_files(files)
        tokenizer = Tokenizer.from_str(files["tokenizer.json"].decode())
        # As transformers (and so vLLM) use a tokenizer.json: its padding and truncation settings do
        # not apply to prompts (BERT exports pad and truncate every input to 128 tokens).
        tokenizer.no_padding()
        tokenizer.no_truncation()
        config: dict[str, Any] = {}
        if raw := files.get("tokenizer_config.json"):
            config = json.loads(raw)
        jinja = files["chat_template.jinja"].decode() if "chat_template.jinja" in files else None
        template = ChatTemplate.from_tokenizer_config(config, jinja)
        tool_template = ChatTemplate.from_tokenizer_config(config, jinja, tools=True)
        if template is None:
            log.warning("model %s has no chat template: chat completions are refused", card.display_name)
        return cls(card, tokenizer, template, tool_template, token_cache_bytes)

    # -- choices: what the endpoints call --------------------------------------------------------

    def chat_choices(self, req: ChatCompletionRequest, request_id: str) -> list[PreprocessedOutput]:
        """One ``PreprocessedOutput`` per choice of a chat request (``n`` of them)."""
        return _fan_out([self.preprocess_chat(req, request_id)], req.n or 1)

    def completion_choices(self, req: CompletionRequest, request_id: str) -> list[PreprocessedOutput]:
        """One per choice of a completion request: each prompt of a list, ``n`` times."""
        prompts = _prompt_list(req.prompt)
        if len(prompts) == 1:
            return _fan_out([self.preprocess_completion(req, request_id)], req.n or 1)
        outs = [
            self.preprocess_completion(req.model_copy(update={"prompt": prompt}), f"{request_id}-p{i}")
            for i, prompt in enumerate(prompts)
        ]
        return _fan_out(outs, req.n or 1)

    # -- chat ---------------------------------------------------------------------------------

    def render_chat(self, req: ChatCompletionRequest, tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt text for a chat request (the template applied to its messages and tools)."""
        template = self._tool_template if tools else self.chat_template
        if template is None:
            raise bad_request(
                f"Model '{self.card.display_name}' has no chat template; use /v1/completions.", "messages"
            )
        messages = template.prepare_messages([m.model_dump(exclude_none=True) for m in req.messages])
        extra = dict(req.chat_template_kwargs or {})
        if req.reasoning_effort is not None:
            extra.setdefault("reasoning_effort", req.reasoning_effort)
        return template.render(
            messages,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            tools=tools,
            extra=extra or None,
        )

    def preprocess_chat(self, req: ChatCompletionRequest, request_id: str) -> PreprocessedOutput:
        """Template + tokenize + map a chat request. ``RequestError`` (400) if it cannot be served."""
        plan = tool_plan(req)
        guided = guided_from(req)
        if plan.guided is not None:
            if guided is not None:
                param = "response_format" if req.response_format is not None else "structured_outputs"
                raise bad_request(
                    f"'tool_choice' '{plan.mode}' already constrains the output; drop '{param}'.", param
                )
            guided = plan.guided
        card = self.card
        if plan.mode == "auto" and card.tool_call_parser is None:
            raise bad_request(
                f"'tool_choice' 'auto' needs a tool-call parser, and the workers of model "
                f"'{card.display_name}' were started without --dyn-tool-call-parser; use 'required', a "
                "named function or 'none'.",
                "tool_choice",
            )
        nvext = req.nvext
        token_ids: Sequence[int]
        if nvext is not None and nvext.token_data is not None:
            token_ids = self._check_ids(nvext.token_data, "nvext.token_data")
        else:
            # The template already writes any BOS the model wants: add no special tokens here.
            token_ids = self.encode(self.render_chat(req, plan.tools), add_special_tokens=False)
        max_param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        guided_param = "tool_choice" if plan.guided is not None else _guided_param(req)
        out = self._build(
            req,
            request_id,
            token_ids,
            "messages",
            max_param,
            req.requested_max_tokens,
            logprobs,
            guided,
            guided_param,
        )
        out.parallel_tool_calls = req.parallel_tool_calls
        out.thinking = _thinking(req)
        return _with_tools(out, plan, card.tool_call_parser, card.reasoning_parser)

    # -- completions --------------------------------------------------------------------------

    def preprocess_completion(self, req: CompletionRequest, request_id: str) -> PreprocessedOutput:
        """Tokenize + map a completion request (text or token-id prompt)."""
        nvext = req.nvext
        prompt = req.prompt
        token_ids: Sequence[int]
        if nvext is not None and nvext.token_data is not None:
            token_ids = self._check_ids(nvext.token_data, "nvext.token_data")
        elif isinstance(prompt, str):
            token_ids = self._encode_prompt(prompt, req.add_special_tokens)
        elif prompt and isinstance(prompt[0], str):
            prompt = str(prompt[0])
            token_ids = self._encode_prompt(prompt, req.add_special_tokens)
        elif prompt and isinstance(prompt[0], list):
            token_ids = self._check_ids(list(prompt[0]), "prompt")
        else:
            token_ids = self._check_ids([int(t) for t in prompt if isinstance(t, int)], "prompt")
        max_tokens = req.max_tokens
        if "max_tokens" not in req.model_fields_set and max_tokens is not None:
            # The default (16), not the client's ask: shrink it to what the context leaves.
            max_tokens = min(max_tokens, max(self.context_length - len(token_ids), 1))
        # Echo with max_tokens 0 scores the prompt: the engine generates one token, which is dropped
        # (what vLLM's server does).
        drop_output = bool(req.echo) and max_tokens == 0
        if drop_output:
            max_tokens = 1
        out = self._build(
            req,
            request_id,
            token_ids,
            "prompt",
            "max_tokens",
            max_tokens,
            req.logprobs,
            guided_from(req),
            _guided_param(req),
        )
        if req.echo:
            out.echo_text = (
                prompt
                if isinstance(prompt, str)
                else self.tokenizer.decode(token_ids, skip_special_tokens=False)
            )
            out.drop_output = drop_output
            if req.logprobs is not None:
                self._require("prompt_logprobs", "logprobs", "prompt logprobs ('echo' with 'logprobs')")
                out.prompt_logprobs = req.logprobs
                out.request.output.prompt_logprobs = req.logprobs
        return out

    def _encode_prompt(self, text: str, add_special_tokens: bool) -> TokenIds:
        ids = self.encode(text, add_special_tokens)
        if not ids:
            raise bad_request("'prompt' must not be empty.", "prompt")
        return ids

    def encode(self, text: str, add_special_tokens: bool) -> TokenIds:
        """``text``'s token ids, through the prefix cache where that is exact (``EncodeTooLong``
        past the ``inline_encode_limit`` in force)."""
        cache = self.token_cache
        budget = _INLINE_BUDGET.get()
        if cache is not None and not (add_special_tokens and self._adds_specials):
            return cache.encode(text, budget)
        if cache is not None and self._special_wrap is not None:
            before, after = self._special_wrap
            return before + cache.encode(text, budget) + after
        if budget is not None:
            budget.spend(len(text))
        # ``encode_batch_fast``: the ids ``encode`` gives, without tracking offsets (less CPU).
        [encoding] = self.tokenizer.encode_batch_fast([text], add_special_tokens=add_special_tokens)
        return as_token_ids(encoding.ids)

    def _check_ids(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise bad_request(f"'{param}' must not be empty.", param)
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise bad_request(f"Token id {bad} is out of range for a vocabulary of {self.vocab_size}.", param)
        return ids

    # -- shared -------------------------------------------------------------------------------

    def _build(
        self,
        req: _SamplingFields,
        request_id: str,
        token_ids: Sequence[int],
        prompt_param: str,
        max_param: str,
        max_tokens: int | None,
        logprobs: int | None,
        guided: GuidedDecoding | None,
        guided_param: str = "structured_outputs",
    ) -> PreprocessedOutput:
        logit_bias = None
        if req.logit_bias:
            self._require("logit_bias", "logit_bias", "'logit_bias'")
            logit_bias = {int(k): v for k, v in req.logit_bias.items()}
            self._check_ids(list(logit_bias), "logit_bias")
        if guided is not None:
            self._require("structured_outputs", guided_param, "structured output (guided decoding)")
        prompt_len = len(token_ids)
        context = self.context_length
        if prompt_len >= context:
            raise RequestError(
                400,
                f"This model's maximum context length is {context} tokens. However, your {prompt_param} "
                f"resulted in {prompt_len} tokens. Please reduce the length of the {prompt_param}.",
                param=prompt_param,
                code="context_length_exceeded",
            )
        if max_tokens is None:
            max_tokens = context - prompt_len
        elif prompt_len + max_tokens > context:
            raise RequestError(
                400,
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the {prompt_param}, {max_tokens} in "
                f"the completion). Please reduce the length of the {prompt_param} or '{max_param}'.",
                param=max_param,
                code="context_length_exceeded",
            )
        nvext = req.nvext
        stop_ids = req.stop_token_ids or []
        if stop_ids:
            self._check_ids(stop_ids, "stop_token_ids")
        temperature = req.temperature
        if nvext is not None and nvext.greed_sampling:
            temperature = 0.0
        top_k = _first(req.top_k, nvext.top_k if nvext else None)
        request = PreprocessedRequest(
            request_id=request_id,
            model=self.card.display_name,
            token_ids=as_token_ids(token_ids),
            sampling=SamplingOptions(
                temperature=temperature,
                top_p=req.top_p,
                top_k=-1 if top_k == 0 else top_k,
                min_p=_first(req.min_p, nvext.min_p if nvext else None),
                seed=req.seed,
                presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty,
                repetition_penalty=_first(
                    req.repetition_penalty, nvext.repetition_penalty if nvext else None
                ),
                logit_bias=logit_bias,
            ),
            stop=StopConditions(
                max_tokens=max_tokens,
                min_tokens=_first(req.min_tokens, nvext.min_tokens if nvext else None) or 0,
                stop_token_ids=list(stop_ids),
                ignore_eos=bool(_first(req.ignore_eos, nvext.ignore_eos if nvext else None)),
            ),
            output=OutputOptions(logprobs=logprobs),
            guided=guided,
            eos_token_ids=list(self.card.eos_token_ids),
            annotations=list(nvext.annotations or []) if nvext else [],
        )
        return PreprocessedOutput(
            request=request,
            prompt_len=prompt_len,
            stop_strings=req.stop_strings(),
            include_stop_str_in_output=req.include_stop_str_in_output,
            skip_special_tokens=req.skip_special_tokens,
            logprobs=logprobs,
            backend_instance_id=_instance_id(nvext.backend_instance_id) if nvext else None,
        )

    def _require(self, feature: str, param: str, what: str) -> None:
        """400 naming ``param`` when the model's engine lacks ``feature`` (``EngineFeatures``)."""
        if not getattr(self.card.features, feature):
            raise bad_request(
                f"The engine serving model '{self.card.display_name}' does not support {what}.",
                param,
                code="unsupported_parameter",
            )

    # -- the way back -------------------------------------------------------------------------

    def make_detokenizer(self, out: PreprocessedOutput) -> Detokenizer:
        """A detokenizer for this request's output, primed with the prompt's last tokens."""
        return Detokenizer(
            self.tokenizer,
            out.request.token_ids[-DETOKENIZER_PROMPT_TAIL:],
            skip_special_tokens=out.skip_special_tokens,
            stop_strings=out.stop_strings,
            include_stop_str_in_output=out.include_stop_str_in_output,
        )

    def token_text(self, token_id: int, context: Sequence[int] = ()) -> str:
        """One token as text, for logprobs (special tokens kept), as vLLM writes it: a token whose
        text ends in an incomplete UTF-8 sequence (U+FFFD) is decoded after up to 4 of the ``context``
        tokens that precede it, and only its own part of that text is kept; "" when the sequence is
        still incomplete."""
        decode = self.tokenizer.decode
        text: str = decode([token_id], skip_special_tokens=False)
        if not text.endswith(REPLACEMENT_CHAR):
            return text
        context = list(context[-TOKEN_TEXT_CONTEXT:])
        for n in range(1, len(context) + 1):
            before = context[-n:]
            full: str = decode([*before, token_id], skip_special_tokens=False)
            if full.endswith(REPLACEMENT_CHAR):
                continue
            # Context tokens that were incomplete themselves lent their bytes to this one.
            clean = len(before)
            while clean > 0 and decode([before[clean - 1]], skip_special_tokens=False).endswith(
                REPLACEMENT_CHAR
            ):
                clean -= 1
            prefix: str = decode(before[:clean], skip_special_tokens=False) if clean else ""
            if full.startswith(prefix):
                return full[len(prefix) :]
            common = next(
                (i for i, (a, b) in enumerate(zip(prefix, full, strict=False)) if a != b),
                min(len(prefix), len(full)),
            )
            return full[common:]
        return ""


def _with_tools(
    out: PreprocessedOutput, plan: ToolPlan, tool_parser: str | None, reasoning_parser: str | None
) -> PreprocessedOutput:
    out.tool_mode = plan.mode
    out.tool_name = plan.name
    out.tools = plan.tools
    out.tool_parser = tool_parser if plan.mode == "auto" else None
    out.reasoning_parser = reasoning_parser
    return out


def _thinking(req: ChatCompletionRequest) -> bool:
    """Whether the request leaves the model's thinking on (``chat_template_kwargs``'
    ``enable_thinking`` or ``thinking`` false turns it off, as vLLM's reasoning parsers read it)."""
    kwargs = req.chat_template_kwargs or {}
    return all(kwargs.get(key, True) is not False for key in ("enable_thinking", "thinking"))


def _guided_param(req: _SamplingFields) -> str:
    """The field that asked for structured output (for a 400 naming it)."""
    rf = req.response_format
    return "response_format" if rf is not None and rf.type != "text" else "structured_outputs"


def _prompt_list(prompt: Any) -> list[Any]:
    """A completions ``prompt`` as a list of single prompts (text or token ids)."""
    if isinstance(prompt, str) or not prompt:
        return [prompt]
    if isinstance(prompt[0], str | list):
        return list(prompt)
    return [prompt]


def _fan_out(prompts: list[PreprocessedOutput], n: int) -> list[PreprocessedOutput]:
    """``n`` choices per prompt, numbered prompt * n + i, each its own engine request
    (``<id>-<index>``; with a seed, choice i samples with ``seed + i``, as vLLM's parallel sampling)."""
    if len(prompts) == 1 and n == 1:
        return prompts
    out = []
    for p, pre in enumerate(prompts):
        base = pre.request
        for i in range(n):
            index = p * n + i
            seed = base.sampling.seed
            sampling = replace_struct(base.sampling, seed=seed + i if seed is not None else None)
            request = replace_struct(base, request_id=f"{base.request_id}-{index}", sampling=sampling)
            out.append(replace(pre, request=request, index=index, prompt_index=p))
    return out


def _first(*values: _T | None) -> _T | None:
    for value in values:
        if value is not None:
            return value
    return None


def _instance_id(value: int | str | None) -> int | None:
    """``backend_instance_id``: an int, or the hex string instance ids are printed as."""
    if value is None or isinstance(value, int):
        return value
    try:
        return int(value.removeprefix("0x"), 16)
    except ValueError:
        raise bad_request(
            "'backend_instance_id' must be an integer or a hex string.", "nvext.backend_instance_id"
        ) from None


# Post-processors that put the same special tokens around any single text (with
# ``add_special_tokens``): Llama's and Mistral's BOS (``TemplateProcessing``), BERT's and RoBERTa's
# CLS/SEP; ``ByteLevel`` adds none.
_WRAPPING_POST_PROCESSORS = {"TemplateProcessing", "BertProcessing", "RobertaProcessing", "ByteLevel"}
_WRAP_PROBES = ("a", "Hello, world! 12 caf\u00e9 \u2603\n<x>", "")


def _special_wrap(tokenizer: Tokenizer) -> tuple[TokenIds, TokenIds] | None:
    """The ids the tokenizer puts before and after any single text when it adds special tokens, if
    its post-processor is one that only does that (checked on a few texts); else ``None``."""
    spec = json.loads(tokenizer.to_str()).get("post_processor") or {}
    kinds = (
        [p.get("type") for p in spec.get("processors", [])]
        if spec.get("type") == "Sequence"
        else [spec.get("type")]
    )
    if tokenizer.truncation is not None or not all(k in _WRAPPING_POST_PROCESSORS for k in kinds):
        return None
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    starts = [i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain]
    if len(starts) != 1:
        return None
    before, after = full[: starts[0]], full[starts[0] + len(plain) :]
    for probe in _WRAP_PROBES:
        ids = tokenizer.encode(probe, add_special_tokens=False).ids
        if tokenizer.encode(probe, add_special_tokens=True).ids != before + ids + after:
            return None
    return as_token_ids(before), as_token_ids(after)
