"""Where a frontend process's CPU goes: py-spy raw profiles -> shares per stage, as markdown.

Input: files written by ``py-spy record --format raw --threads`` (what ``long_prompt_bench.py
--py-spy DIR`` records: active samples only, one line per distinct stack with its count). Each sample
is put in the first category (in ``CATEGORIES`` order) one of whose patterns occurs in one of its
frames, so a stage's share includes what it calls (a template's ``jinja2`` frames count as the
template). Shares are of all the process's active samples; the event loop's thread (``MainThread``)
and the others (``asyncio.to_thread`` workers) are also shown apart. Frames above the loop's ``Runner.run`` (start-up)
are ignored, a sample with none below it is the loop's own C code, and a pool thread waiting for
work is not counted.

Whose code: a sample is ours when its innermost frame is in ``dynamo/``, except the frames in
``NATIVE_CALLS``, whose samples are (almost all) a Rust or C library's call made from that line; a
sample in any other file (uvicorn, asyncio, pydantic, jinja2, ...) or in the loop's C code is a
library's. The split bounds what changing our code alone can gain.

Run: ``python benchmarks/profile_summary.py FILE... [--rate 200 --seconds 13] [--out FILE.md]``.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (category, patterns matched against frames "function (file:line)")
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("chat template render", ("ChatTemplate.", "render_chat", "jinja2/")),
    (
        "tokenize (prefix cache, ASCII encoder, HF encode)",
        ("PrefixTokenCache.", "AsciiEncoder.", "ascii_encoder.py", "Preprocessor.encode", "tokenizers"),
    ),
    ("preprocess other (sampling, checks)", ("dynamo/llm/preprocessor.py", "stages/preprocess.py")),
    ("parse + validate body (JSON, pydantic)", ("stages/parse.py", "pydantic", "dynamo/llm/openai.py")),
    ("KV router (block hashes, index, selection)", ("dynamo/router/", "kv_events.py")),
    ("request plane (msgpack, framing, sockets)", ("dynamo/runtime/request_plane/",)),
    ("routing + generation bookkeeping", ("dynamo/frontend/routing", "generation.py", "stages/route.py")),
    ("detokenize", ("detokenizer.py",)),
    (
        "response building + SSE",
        ("stages/stream.py", "stages/collect.py", "responses.py", "sse.py", "choices.py"),
    ),
    ("metrics", ("prometheus_client", "frontend/metrics.py", "loop_lag.py")),
    ("HTTP server (uvicorn, starlette)", ("uvicorn/", "starlette/", "httptools")),
    ("event loop (uvloop, asyncio)", ("asyncio/", "uvloop")),
]
# Our frames whose own samples are a library's native call (py-spy without --native shows no frame
# for it): the HF tokenizer's encode (cProfile: 41.2 of the listcomp's 42.0 us a request) and
# DecodeStream.step (17.6 of 20.0). ``_encode_all`` calls it since Dec 7 (before: the listcomp).
NATIVE_CALLS = (
    "PrefixTokenCache.encode.<locals>.<listcomp>",
    "PrefixTokenCache._encode_all (",
    "Detokenizer._step (",
    "Preprocessor.encode (",
)
LOOP_C = "event loop's own C code (uvloop: sockets, epoll, callbacks)"
OTHER = "other"
_LOOP_ROOT = "Runner.run (asyncio/runners.py"  # below it: the loop's callbacks and coroutines
_POOL_WAIT = "_worker (concurrent/futures/thread.py"  # a pool thread waiting for work: not CPU
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")


def categorize(frames: list[str]) -> str:
    """The category of one sample's frames (root first)."""
    roots = [i for i, f in enumerate(frames) if f.startswith(_LOOP_ROOT)]
    if roots:  # drop the process's start-up frames (uvicorn's among them) above the loop
        frames = frames[roots[-1] + 1 :]
        if not frames:
            return LOOP_C
    for name, patterns in CATEGORIES:
        for frame in frames:
            if any(p in frame for p in patterns):
                return name
    return OTHER


def owner(frames: list[str]) -> str:
    """``ours``, ``native call`` (a library's Rust/C code called from our line) or ``libraries``."""
    leaf = frames[-1] if frames else ""
    if "(dynamo/" not in leaf:
        return "libraries"
    return "native call" if any(p in leaf for p in NATIVE_CALLS) else "ours"


def load(path: Path) -> tuple[Counter[str], Counter[str], Counter[str], Counter[str]]:
    """(main-thread categories, other-thread categories, leaf functions, owners) sample counts."""
    main: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        frames = m["stack"].split(";")
        count = int(m["count"])
        thread, frames = frames[0], frames[1:]
        if frames and frames[-1].startswith(_POOL_WAIT):
            continue
        cat = categorize(frames)
        (main if "MainThread" in thread else threads)[cat] += count
        if frames:
            leaves[re.sub(r":\d+\)$", ")", frames[-1])] += count
        owners[owner(frames)] += count
    return main, threads, leaves, owners


def summarize(paths: list[Path], rate: float, seconds: float, top: int = 8) -> list[str]:
    out: list[str] = []
    for path in paths:
        main, threads, leaves, owners = load(path)
        total = sum(main.values()) + sum(threads.values())
        if not total:
            continue
        window = rate * seconds
        out += [
            f"### {path.stem}",
            "",
            f"{total} active samples; event-loop thread busy {sum(main.values()) / window:.0%} of the "
            f"window, other threads {sum(threads.values()) / window:.2f} cores.",
            "",
            "| where | share of all | event-loop thread | other threads |",
            "|---|---|---|---|",
        ]
        names = [n for n, _ in CATEGORIES] + [LOOP_C, OTHER]
        for name in sorted(names, key=lambda n: -(main[n] + threads[n])):
            both = main[name] + threads[name]
            if both == 0:
                continue
            out.append(
                f"| {name} | {both / total:.1%} | {main[name] / total:.1%} | {threads[name] / total:.1%} |"
            )
        out += [
            "",
            f"Whose code: ours {owners['ours'] / total:.1%}; libraries and the loop's C code "
            f"{owners['libraries'] / total:.1%}, plus their native calls from our lines "
            f"{owners['native call'] / total:.1%} (HF tokenizers' encode, DecodeStream).",
            "",
            "Top leaf functions: " + "; ".join(f"{f} {c / total:.1%}" for f, c in leaves.most_common(top)),
            "",
        ]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--rate", type=float, default=200.0, help="py-spy --rate the files were recorded at")
    p.add_argument(
        "--seconds",
        type=float,
        default=13.0,
        help="recorded seconds per file (long_prompt_bench records warm-up + measured: 3 + 10)",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = p.parse_args()
    lines = summarize(args.files, args.rate, args.seconds)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
