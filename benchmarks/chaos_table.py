"""Tabulate the chaos scenarios' records into ``benchmarks/results/chaos.md``.

Each chaos test (``tests/chaos/``) appends one JSON line per run to
``tests/chaos/results/<scenario>.json`` (``tests.chaos.tally.record``). This script takes the newest
line of every scenario and writes one markdown table: faults injected, requests, refused, failed,
tokens lost, tokens duplicated, recovery time. A scenario whose failures are its point (no
migration: the client must get a clear error) is marked so and does not count as a loss.

    .venv/bin/python -m pytest -p no:cacheprovider tests/chaos -q            # CI scenarios
    DYN_CHAOS_SLOW=1 .venv/bin/python -m pytest -p no:cacheprovider tests/chaos -q   # and the slow ones
    .venv/bin/python benchmarks/chaos_table.py [--results DIR] [--out FILE] [--check]

``--check`` exits 1 when a scenario that must lose nothing lost something.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tests" / "chaos" / "results"
OUT = ROOT / "benchmarks" / "results" / "chaos.md"


def load(results: Path) -> list[dict]:
    """The newest record of each scenario, sorted by scenario name."""
    rows: dict[str, dict] = {}
    for path in sorted(results.glob("*.json")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            name = row["scenario"]
            if name not in rows or row.get("time", "") >= rows[name].get("time", ""):
                rows[name] = row
    return [rows[k] for k in sorted(rows)]


def expected_failures(row: dict) -> bool:
    return bool(row.get("notes", {}).get("expected_failures"))


def lost(row: dict) -> bool:
    """True when a scenario that must lose nothing lost something."""
    if expected_failures(row):
        return False
    return bool(row["failed"] or row["tokens_lost"] or row["tokens_duplicated"])


def _recovery(row: dict) -> str:
    value = row.get("recovery_s")
    return "—" if value is None else f"{value:.2f} s"


def render(rows: list[dict], command: str) -> str:
    lines = [
        "# Chaos scenarios",
        "",
        "Every component on its own simulated host (a network namespace on a private bridge), faults",
        "injected while clients stream; counted by the client, token by token (docs/chaos.md).",
        "*Refused* is a 429/503 before the request was accepted (not a loss); *failed* is an accepted",
        "request that errored, was cut short or had tokens lost or duplicated.",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}` on "
        f"{platform.machine()} Linux, {os.cpu_count()} cores; each row is the scenario's newest run "
        "(its time in the last column).",
        "",
        "| scenario | faults injected | requests | refused | failed | tokens lost | tokens duplicated | recovery | run at |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        failed = str(row["failed"])
        if expected_failures(row):
            failed += " (expected: no migration, clear error)"
        lines.append(
            f"| {row['scenario']} | {'; '.join(row.get('faults', [])) or '—'} | {row['sent']} | {row['refused']} "
            f"| {failed} | {row['tokens_lost']} | {row['tokens_duplicated']} | {_recovery(row)} | {row.get('time', '')} |"
        )
    losing = [r["scenario"] for r in rows if lost(r)]
    lines += ["", "All losses 0." if not losing else f"**Losses in: {', '.join(losing)}.**", ""]
    lines += ["Recovery: how each scenario measures it.", ""]
    lines += [f"- `{r['scenario']}`: {recovery_meaning(r)}" for r in rows]
    notes = [r for r in rows if any(k != "recovery_is" for k in r.get("notes", {}))]
    if notes:
        lines += ["", "Notes recorded by the scenarios:", ""]
        for r in notes:
            detail = ", ".join(f"{k}={v}" for k, v in r["notes"].items() if k != "recovery_is")
            lines.append(f"- `{r['scenario']}`: {detail}")
    return "\n".join(lines) + "\n"


RECOVERY = {
    "hung_worker_sigstop_migration": "the longest wait for a token on any stream after the fault (detection + migration)",
    "hung_worker_link_cut_migration": "the longest wait for a token on any stream after the fault (detection + migration)",
    "hung_worker_sigstop_no_migration": "fault -> the last failed client got its error",
    "etcd_outage_data_lost": "etcd back -> every worker (the one started during the outage too) listed by the frontend",
    "frontend_restart": "new frontend process started -> its first completed request",
    "nats_restart": "NATS back -> the KV router's prefix routing is exact again",
    "rolling_replacement": "not applicable (no request may be disturbed)",
}


def recovery_meaning(row: dict) -> str:
    """What the row's recovery time measures: the scenario's own ``notes.recovery_is``, else ours."""
    return str(
        row.get("notes", {}).get("recovery_is") or RECOVERY.get(row["scenario"], "see the scenario's test")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of <scenario>.json records")
    parser.add_argument("--out", type=Path, default=OUT, help="markdown file to write ('-': stdout)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a scenario lost anything")
    args = parser.parse_args(argv)
    rows = load(args.results)
    if not rows:
        print(f"no records in {args.results}: run the chaos tests first", file=sys.stderr)
        return 2
    command = "python benchmarks/chaos_table.py" + (" " + " ".join(argv) if argv else "")
    text = render(rows, command)
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out} ({len(rows)} scenarios)")
    return 1 if args.check and any(lost(r) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
