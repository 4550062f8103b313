"""Local model preparation: ``python3 -m dynamo.models prepare smollm2``.

Journey: before anything serves — produces the Hugging Face folder that workers publish in their
model deployment card and the frontend preprocesses with.
"""

from dynamo.models.catalog import CATALOG, ModelSource
from dynamo.models.errors import PrepareError
from dynamo.models.prepare import cache_root, default_model_dir, model_path, prepare_model

__all__ = [
    "CATALOG",
    "ModelSource",
    "PrepareError",
    "cache_root",
    "default_model_dir",
    "model_path",
    "prepare_model",
]
