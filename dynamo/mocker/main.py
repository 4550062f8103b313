"""``python3 -m dynamo.mocker --model-path DIR``: simulated engine workers on the worker base."""

from __future__ import annotations

from dynamo.mocker.worker import MockerWorkerEngine
from dynamo.worker import run_worker


def main(argv: list[str] | None = None) -> None:
    run_worker(MockerWorkerEngine, argv)
