"""Find the ``python3 -m dynamo.<component> ARGS`` invocations in a container's command and args,
through the shell wrappers our examples use (``/bin/bash -c "exec ... > >(tee /tmp/worker.log) 2>&1"``)."""

from __future__ import annotations

import re
import shlex
from typing import Any

SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash"}
_SUBST = re.compile(r"\$\([^()]*\)")
_TEE = re.compile(r">\s*>\(\s*tee\b[^)]*\)")
_SEGMENT = re.compile(r"\|\||&&|[|;]")


def container_words(container: dict[str, Any]) -> list[str]:
    return [str(w) for w in (container.get("command") or []) + (container.get("args") or [])]


def shell_script(words: list[str]) -> str | None:
    if len(words) >= 3 and words[0] in SHELLS and words[1] == "-c":
        return words[2]
    return None


def invocations(container: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """``[(component, args)]`` for every ``python[3] -m dynamo.<component>`` the container runs.
    A shell's ``$(...)`` becomes the placeholder word ``SUBST`` (its value is only known at run time)."""
    words = container_words(container)
    script = shell_script(words)
    if script is None:
        segments = [words]
    else:
        text = _TEE.sub(" ", _SUBST.sub("SUBST", script)).replace("2>&1", " ")
        segments = [shlex.split(part) for part in _SEGMENT.split(text)]
    found = []
    for seg in segments:
        while seg and (seg[0] == "exec" or ("=" in seg[0] and not seg[0].startswith("-"))):
            seg = seg[1:]
        if (
            len(seg) >= 3
            and re.fullmatch(r"python3?", seg[0])
            and seg[1] == "-m"
            and seg[2].startswith("dynamo.")
        ):
            found.append((seg[2].removeprefix("dynamo."), seg[3:]))
    return found
