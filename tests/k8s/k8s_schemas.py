"""Offline validation: built-in kinds with kubernetes-validate, our custom resources with
jsonschema against the CRDs' openAPIV3Schema, read strictly the way ``kubectl apply`` (field
validation Strict) does: an unknown field is an error, except under preserve-unknown-fields."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "crds"
K8S_VERSION = "1.33"


@functools.cache
def crds() -> dict[str, dict[str, Any]]:
    """Our CRDs by kind."""
    out = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        out[crd["spec"]["names"]["kind"]] = crd
    return out


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes structural schema as a Draft 4 JSON schema that rejects unknown fields."""
    s = copy.deepcopy(schema)
    preserve = s.pop("x-kubernetes-preserve-unknown-fields", False)
    s.pop("x-kubernetes-int-or-string", None)
    for key in list(s):
        if key.startswith("x-kubernetes-"):
            s.pop(key)
    if "properties" in s:
        s["properties"] = {k: _strict(v) for k, v in s["properties"].items()}
        if not preserve and "additionalProperties" not in s:
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = _strict(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = _strict(s["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in s:
            s[key] = [_strict(x) for x in s[key]]
    return s


@functools.cache
def _validator(kind: str, version: str = "v1alpha1") -> jsonschema.Draft4Validator:
    crd = crds()[kind]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _strict(served["schema"]["openAPIV3Schema"])
    # metadata is validated by the API server itself, not by the CRD schema.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft4Validator(schema)


def custom_errors(obj: dict[str, Any]) -> list[str]:
    """Schema errors of one DynamoGraphDeployment(Request), as ``path: message`` lines."""
    validator = _validator(obj["kind"], str(obj.get("apiVersion", "nvidia.com/v1alpha1")).split("/")[-1])
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    ]


def validate(obj: dict[str, Any]) -> None:
    """Validate any object we ship: our kinds against our CRDs, the rest against Kubernetes' schemas."""
    if obj.get("apiVersion") in ("nvidia.com/v1alpha1", "nvidia.com/v1beta1"):
        errors = custom_errors(obj)
        assert not errors, f"{obj['kind']} {obj['metadata'].get('name')}: " + "; ".join(errors)
        return
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
