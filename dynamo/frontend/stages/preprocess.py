"""Stage 2, preprocess: admit the request to its model, then template and tokenize it.

Journey: parse -> **preprocess** -> route. ``admit`` refuses before any work: 404 for a model no
worker registered, 503 while it has no live worker, 429 once ``--max-inflight-requests`` of its
requests are in flight. ``preprocess`` refuses (404) a model its card does not serve on the endpoint
(an embedding model), then runs the model's ``Preprocessor`` (``dynamo.llm.preprocessor``: chat
template, tokenizer, sampling and stop mapping; 400 for a prompt it cannot serve).

Long prompts never stall the other streams: the preprocessing runs on the event loop only while it
tokenizes at most ``INLINE_ENCODE_CHARS`` characters that the prefix cache does not hold (about a
millisecond of tokenizer time; ASCII text, which ``AsciiEncoder`` tokenizes, counts a quarter).
Past that, pieces of up to ``LEARN_MAX_CHARS`` that are ASCII but for at most
``LEARN_FOREIGN_CHARS`` are encoded into the prefix cache on the loop, a slice at a time with the
loop handed back in between (one prompt at a time), and the preprocessing runs again inline;
anything else starts again in a thread, where the tokenizer runs without the GIL and encodes all
of it (``AsciiEncoder`` is Python: it would hold the GIL the loop needs). A prompt whose long parts
are cached (a shared system prompt) stays on the loop, without a thread hop. ``offload`` (the
caller's: a large body) skips the inline attempt. The threads are a pool of
``DYN_PREPROCESS_THREADS``, else the process's cores (with ``--http-workers N`` each process has
its own pool: set it to about cores / N). They run at
a lower priority (``DYN_PREPROCESS_NICE``, default 10): a Linux thread has its own nice value, so
the event loop's thread gets a core back the moment it wakes, ahead of a tokenizing thread, and
the loop does not lag behind the pool; with fewer threads than cores a core sits idle while
prompts queue for the pool. Both are read with the frontend's flags (``FrontendConfig``), so a bad
value stops the frontend at start-up with one line naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dynamo.frontend.args import preprocess_nice, preprocess_threads
from dynamo.frontend.endpoints import CompletionEndpoint
from dynamo.frontend.models import ModelManager, ServedModel
from dynamo.llm.errors import model_not_found, service_unavailable, too_many_requests
from dynamo.llm.preprocessor import PreprocessedOutput, inline_encode_limit
from dynamo.llm.token_cache import EncodeTooLong, tokenizer_only

# Characters tokenized on the event loop at most per request (~0.25 us each: about 1 ms); measured
# in benchmarks/results/profiles/README.md.
INLINE_ENCODE_CHARS = 4096
_pool: ThreadPoolExecutor | None = None
_MODEL_TYPES = {"chat": "chat", "completion": "completions"}  # endpoint kind -> card model type


def admit(models: ModelManager, name: str, max_inflight: int) -> ServedModel:
    """The served model ``name``, if it can take one more request now."""
    model = models.get(name)
    if model is None:
        if models.loading(name):  # discovered, tokenizer still loading (a frontend just started)
            raise service_unavailable(f"model '{name}' is still loading on this frontend; retry shortly")
        raise model_not_found(name)
    if not model.has_workers:
        raise service_unavailable(f"no worker serves model '{name}' right now")
    if model.inflight >= max_inflight:
        raise too_many_requests(f"model '{name}' has {model.inflight} requests in flight; retry shortly")
    return model


async def preprocess(
    model: ServedModel, endpoint: CompletionEndpoint, request: Any, request_id: str, offload: bool
) -> list[PreprocessedOutput]:
    """The tokenized request(s) for the engines (one per choice) and what stays here for the way back."""
    model.require(_MODEL_TYPES[endpoint.kind])
    if not offload:
        try:
            with inline_encode_limit(INLINE_ENCODE_CHARS):
                return endpoint.preprocess(model.preprocessor, request, request_id)
        except EncodeTooLong as exc:
            cache = model.preprocessor.token_cache
            if cache is not None and cache.learnable(exc.texts):
                async with _learning_lock():  # one prompt at a time: at most one slice a loop turn
                    for _ in cache.learn_slices(exc.texts):
                        await asyncio.sleep(0)  # other streams run between slices
                with contextlib.suppress(EncodeTooLong):  # evicted meanwhile, or more left: a thread
                    with inline_encode_limit(INLINE_ENCODE_CHARS):
                        return endpoint.preprocess(model.preprocessor, request, request_id)
            # too much to tokenize on the loop: all of it again, in a thread

    def work() -> list[PreprocessedOutput]:
        with tokenizer_only():  # the GIL-free tokenizer: this thread runs beside the loop
            return endpoint.preprocess(model.preprocessor, request, request_id)

    return await asyncio.get_running_loop().run_in_executor(_threads(), work)


_learner: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None


def _learning_lock() -> asyncio.Lock:
    """The running loop's lock for learning prompts in slices (many prompts learning at once would
    each run a slice in the same loop turn)."""
    global _learner
    loop = asyncio.get_running_loop()
    if _learner is None or _learner[0] is not loop:
        _learner = (loop, asyncio.Lock())
    return _learner[1]


_settings: tuple[int, int] | None = None  # (threads, nice) from the frontend's config


def configure_pool(threads: int, nice: int) -> None:
    """The pool's size and nice value (read and checked with the frontend's flags at start-up);
    before the pool's first use."""
    global _settings
    _settings = (threads, nice)


def _lower_priority(nice: int) -> None:
    """Runs in each pool thread: a Linux thread has its own nice value, so the scheduler gives a
    core back to the event loop's thread as soon as it wakes, ahead of a tokenizing thread."""
    if nice:
        with contextlib.suppress(OSError):
            os.setpriority(
                os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice
            )


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        threads, nice = _settings or (preprocess_threads(), preprocess_nice())
        _pool = ThreadPoolExecutor(
            threads, thread_name_prefix="preprocess", initializer=_lower_priority, initargs=(nice,)
        )
    return _pool
