"""Logging set-up for every dynamo process, driven by ``DYN_LOG``.

``DYN_LOG`` is a level (``error|warn|info|debug|trace``) optionally followed by per-module
overrides: ``info,dynamo.router=debug,dynamo.runtime.request_plane=trace``. ``trace`` is a level
below ``debug``. ``DYN_LOGGING_JSONL=1`` switches to one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}


class _JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "target": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def parse_log_spec(spec: str) -> tuple[int, dict[str, int]]:
    """Parse a ``DYN_LOG`` value into a root level and per-logger overrides.

    Raises ``ValueError`` naming the bad part.
    """
    root = logging.INFO
    overrides: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if "=" in part:
            target, _, level = part.partition("=")
            if level.strip().lower() not in _LEVELS:
                raise ValueError(f"unknown log level {level!r} for {target!r} in DYN_LOG")
            overrides[target.strip()] = _LEVELS[level.strip().lower()]
        else:
            if part.lower() not in _LEVELS:
                raise ValueError(f"unknown log level {part!r} in DYN_LOG (use {'|'.join(_LEVELS)})")
            root = _LEVELS[part.lower()]
    return root, overrides


def configure_logging(spec: str | None = None) -> None:
    """Configure the root logger from ``spec`` or ``DYN_LOG`` (default ``info``).

    Idempotent: a second call replaces the handler instead of adding one.
    """
    spec = spec if spec is not None else os.environ.get("DYN_LOG", "info")
    try:
        root_level, overrides = parse_log_spec(spec)
    except ValueError as exc:
        root_level, overrides = logging.INFO, {}
        print(f"warning: {exc}; using info", file=sys.stderr)
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("DYN_LOGGING_JSONL", "").lower() in ("1", "true", "yes"):
        handler.setFormatter(_JsonLineFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_dynamo", False):
            root.removeHandler(old)
    handler._dynamo = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(root_level)
    # Chatty third-party loggers stay at warning unless asked for explicitly.
    for noisy in ("grpc", "aetcd", "asyncio", "nats", "httpx", "uvicorn.access"):
        if noisy not in overrides:
            logging.getLogger(noisy).setLevel(max(root_level, logging.WARNING))
    for target, level in overrides.items():
        logging.getLogger(target).setLevel(level)
