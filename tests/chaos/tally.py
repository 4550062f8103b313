"""Counts of what a chaos scenario did and lost, written as JSON lines for the chaos table.

Counting rule (issue 13): a request refused with 429/503 before it was accepted is *refused*, not
lost; a request accepted and then failed, cut short, or answered with lost or duplicated tokens is
*failed* (lost). ``record`` appends one JSON line per run to ``tests/chaos/results/<scenario>.json``
(gitignored); ``benchmarks/chaos_table.py`` tabulates them into ``benchmarks/results/chaos.md``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Tally:
    """What one scenario sent, what came back, and what was lost."""

    sent: int = 0
    completed: int = 0
    refused: int = 0  # 429/503 before acceptance: not a loss
    failed: int = 0  # accepted, then an error, a short or an over-long answer: a loss
    tokens_lost: int = 0
    tokens_duplicated: int = 0
    recovery_s: float | None = None  # fault -> first success after it (the scenario defines it)
    faults: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # "<status>: <error>" of each refused request
    notes: dict[str, object] = field(default_factory=dict)

    def fault(self, description: str) -> None:
        """Note one injected fault (e.g. ``"SIGSTOP worker-a"``)."""
        self.faults.append(description)

    def add(self, outcome: Outcome) -> None:
        """Count one request's outcome."""
        self.sent += 1
        if outcome.refused:
            self.refused += 1
            self.refusals.append(f"{outcome.status}: {outcome.error}")
            return
        lost = max(0, outcome.expected_tokens - outcome.tokens) if outcome.expected_tokens else 0
        dup = max(0, outcome.tokens - outcome.expected_tokens) if outcome.expected_tokens else 0
        self.tokens_lost += lost
        self.tokens_duplicated += dup
        if outcome.error is None and lost == 0 and dup == 0:
            self.completed += 1
        else:
            self.failed += 1

    @property
    def losses(self) -> int:
        return self.failed + self.tokens_lost + self.tokens_duplicated

    def summary(self) -> str:
        return (
            f"sent={self.sent} completed={self.completed} refused={self.refused} failed={self.failed} "
            f"tokens_lost={self.tokens_lost} tokens_duplicated={self.tokens_duplicated} "
            f"recovery_s={self.recovery_s} faults={self.faults} refusals={self.refusals}"
        )


@dataclass
class Outcome:
    """One request as the client saw it."""

    status: int  # HTTP status (0: no response at all)
    tokens: int = 0  # tokens the client received
    expected_tokens: int = 0  # tokens it should have received (0: unknown, not checked)
    error: str | None = None  # why it is not a success, if it is not
    finish_reason: str | None = None
    latency_s: float = 0.0
    text: str = ""

    @property
    def refused(self) -> bool:
        """Refused before acceptance (429/503 status, no stream started): not a loss."""
        return self.status in (429, 503)

    @property
    def ok(self) -> bool:
        return self.error is None and self.tokens == self.expected_tokens


def record(scenario: str, tally: Tally, path: Path | None = None) -> Path:
    """Append ``tally`` as one JSON line to ``path`` (default ``tests/chaos/results/<scenario>.json``)."""
    target = path if path is not None else RESULTS_DIR / f"{scenario}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    row = {"scenario": scenario, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **asdict(tally)}
    with open(target, "a") as f:
        f.write(json.dumps(row) + "\n")
    return target
