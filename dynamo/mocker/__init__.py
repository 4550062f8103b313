"""The mocker: a simulated vLLM-like engine for testing routing, disaggregation and planning at
scale without GPUs. ``MockEngine`` is the engine core; the worker adapter on the shared base lives in ``worker.py``, its flags in ``args.py``."""

from dynamo.mocker.config import MockerConfig
from dynamo.mocker.engine import MockEngine
from dynamo.mocker.kv_manager import KvBlockSnapshot

__all__ = ["KvBlockSnapshot", "MockEngine", "MockerConfig"]
