"""Helpers for the KV routing end-to-end tests: long shared prompts and routed chat calls."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.graph import start_mocker
from tests.support.procs import ManagedProcess

WORDS = (
    "river mountain engine lantern orbit harbor quiet meadow signal copper garden falcon ledger "
    "velvet summit archive prism canyon ember tunnel beacon willow marble thunder compass harvest"
).split()


def system_prompt(seed: int, words: int = 600) -> str:
    """A long, seeded system prompt (about 1.3 tokens per word with SmolLM2's tokenizer)."""
    rng = random.Random(seed)
    return f"[policy {seed}] " + " ".join(rng.choice(WORDS) for _ in range(words))


@dataclass
class Routed:
    """What the frontend's routing-debug header said about one request."""

    instance: str
    overlap_blocks: int
    body: dict


def chat(
    http: httpx.Client, base_url: str, model: str, system: str, user: str, max_tokens: int = 4, **extra
) -> Routed:
    """A chat completion with ``x-dynamo-routing-debug``; fails on any non-200 answer."""
    r = http.post(
        f"{base_url}/v1/chat/completions",
        headers={"x-dynamo-routing-debug": "1"},
        json={
            "model": model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": max_tokens,
            **extra,
        },
    )
    assert r.status_code == 200, r.text
    instance, _, overlap = r.headers["x-dynamo-instance"].partition("; overlap_blocks=")
    return Routed(instance, int(overlap), r.json())


def start_mockers(
    log_dir: Path, env: dict[str, str], model_dir: Path, tag: str, count: int, *args: str
) -> list[ManagedProcess]:
    """``count`` mocker processes (one worker each), started one after the other."""
    return [start_mocker(log_dir, env, model_dir, f"mocker-{tag}-{i}", *args) for i in range(count)]


def instance_of(proc: ManagedProcess) -> str:
    """The hex instance id a worker process logged when it became ready."""
    match = re.search(r"(?:MockerWorker|VllmWorker) ([0-9a-f]+) initialized", proc.log_text())
    assert match, f"{proc.name} did not log its instance id"
    return match.group(1)
