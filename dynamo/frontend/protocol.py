"""The frontend's own response types (``/health``, ``/live``, ``/v1/models/{model}/ready``).

Journey: operations probes -> **these shapes** (the OpenAI types live in ``dynamo.llm.openai``).
``/openapi.json`` is generated from them; the routes build the same shapes as plain dicts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HealthInstance(_Response):
    model: str
    instance_id: str  # hex
    endpoint: str  # dyn://namespace.component.endpoint
    address: str  # request-plane host:port


class Health(_Response):
    """``GET /health``: 200 ``healthy`` when some model has a live worker, else 503 ``unhealthy``."""

    status: Literal["healthy", "unhealthy"]
    models: list[str]
    instances: list[HealthInstance]


class Live(_Response):
    """``GET /live``: the process answers."""

    status: Literal["live"]


class ModelReadiness(_Response):
    """``GET /v1/models/{model}/ready``: 200 when the model has a live worker, else 503."""

    model: str
    ready: bool
