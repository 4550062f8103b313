"""The ``--model`` of a vLLM worker as a filesystem path: given, but not there.

Checked twice on the worker's start: by ``main`` before vLLM is imported (a typo in a path then
fails at once, not after vLLM's import), and by ``VllmEngine.start`` for engines built
in-process. Hub ids (``Qwen/Qwen3-0.6B``) are left to vLLM.
"""

from __future__ import annotations

import os

MODEL_FLAG = "--model"


def is_missing_local_path(model: str) -> bool:
    """A model given as a filesystem path (``/``, ``./``, ``../``, ``~``) that does not exist."""
    return model.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(model))


def model_argument(argv: list[str]) -> str | None:
    """The value of the last ``--model X`` / ``--model=X`` in ``argv`` (None if absent)."""
    found = None
    for i, arg in enumerate(argv):
        if arg == MODEL_FLAG and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(MODEL_FLAG + "="):
            found = arg.split("=", 1)[1]
    return found


def missing_model_detail(model: str) -> str:
    """Why the engine cannot start on a missing model path (its error line says the rest)."""
    return f"cannot load model {model!r}: no such file or directory"
