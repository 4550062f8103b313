"""Command line of the mocker worker (``python3 -m dynamo.mocker``): the simulated engine's flags
(vLLM's names where vLLM has them) on top of the shared worker flags (``dynamo.worker.args``).

Journey: this configures the **engine** stage (request plane -> simulated engine -> token ids back).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from dynamo.mocker.config import MockerConfig
from dynamo.worker.args import WorkerArgs, add_worker_args, parse_with, worker_args_from


@dataclass
class MockerWorkerConfig:
    """Everything a mocker worker process needs."""

    worker: WorkerArgs
    engine: MockerConfig
    model_path: str
    served_model_name: str | None = None
    max_model_len: int | None = None  # None: the model's context length
    replicas: int = 1  # --num-workers: simulated engines in this process, each its own instance
    kv_events: bool = True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m dynamo.mocker", description="Simulated vLLM-like engine workers (no GPU needed)."
    )
    parser.add_argument("--model-path", required=True, help="HF model folder (tokenizer and config are read)")
    parser.add_argument(
        "--model-name",
        "--served-model-name",
        dest="model_name",
        default=None,
        help="served model name (default: the folder name)",
    )
    parser.add_argument("--num-workers", type=int, default=1, help="simulated engines in this process")
    parser.add_argument(
        "--max-model-len", type=int, default=None, help="context length (default: the model's)"
    )
    MockerConfig.add_cli_args(parser)
    add_worker_args(parser, kv_events_help="default: on")
    return parser


def config_from_args(args: argparse.Namespace) -> MockerWorkerConfig:
    """``ValueError`` on bad values."""
    worker = worker_args_from(args)
    engine = MockerConfig.from_args(args)
    if args.num_workers < 1:
        raise ValueError("--num-workers must be >= 1")
    kv_events = True if worker.kv_events is None else worker.kv_events
    return MockerWorkerConfig(
        worker=worker,
        engine=engine,
        model_path=args.model_path,
        served_model_name=args.model_name,
        max_model_len=args.max_model_len,
        replicas=args.num_workers,
        kv_events=bool(kv_events),
    )


def parse_args(argv: list[str] | None = None) -> MockerWorkerConfig:
    """Parse the command line (exits 2 on bad flags)."""
    return parse_with(build_parser(), config_from_args, argv)
