"""Detokenizer cost per token: ``python tests/llm/bench_detokenizer.py [MODEL_DIR]``.

Not a test (no ``test_`` prefix). Feeds one token per ``add`` like a streaming engine would and
prints µs/token for: the Detokenizer without and with stop strings, bare ``DecodeStream`` and
the Python prefix/read-offset algorithm (for comparison).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from dynamo.llm.detokenizer import Detokenizer
from dynamo.models import prepare_model

TEXT = (
    "The capital of France is Paris. 日本語のテキスト 🙂🚀 Ünïcödé, and code: def f(x): return x**2\n"
    "A longer English sentence follows, with ordinary words that tokenize into common pieces.\n"
) * 50


def _offsets(tokenizer: Tokenizer, ids: list[int]) -> str:
    out, seen, prefix, read = [], [], 0, 0
    for token_id in ids:
        seen.append(token_id)
        prefix_text = tokenizer.decode(seen[prefix:read])
        new_text = tokenizer.decode(seen[prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            out.append(new_text[len(prefix_text) :])
            prefix, read = read, len(seen)
    return "".join(out)


def _time(label: str, n: int, fn) -> None:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    print(f"{label:<40} {best / n * 1e6:6.2f} µs/token")


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else prepare_model("smollm2", tokenizer_only=True)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = tokenizer.encode(TEXT, add_special_tokens=False).ids
    prompt = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False).ids
    print(f"{len(ids)} tokens")

    def detok(stops: list[str]) -> None:
        d = Detokenizer(tokenizer, prompt, stop_strings=stops)
        for token_id in ids:
            d.add((token_id,))
        d.flush()

    def stream() -> None:
        s = DecodeStream(ids=prompt, skip_special_tokens=True)
        for token_id in ids:
            s.step(tokenizer, token_id)

    _time("Detokenizer, no stop strings", len(ids), lambda: detok([]))
    _time("Detokenizer, 3 stop strings", len(ids), lambda: detok(["</answer>", "\n\n\n", "STOP"]))
    _time("bare DecodeStream.step", len(ids), stream)
    _time("Python prefix/read offsets (2 decodes)", len(ids), lambda: _offsets(tokenizer, ids))


if __name__ == "__main__":
    main()
