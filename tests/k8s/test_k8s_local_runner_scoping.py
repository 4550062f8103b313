"""Two graphs on one etcd, run by the local runner (python3 -m dynamo.deploy run) with real
processes: a real etcd, real frontends, real mocker workers, both graphs serving the same model
name. Each graph's frontend must route only to its own graph's workers, because the runner gives
it ``DYN_DISCOVERY_NAMESPACES`` (the Dynamo namespaces its graph uses), as the operator does.

Graph A splits its frontend and its workers over two ``dynamoNamespace``s, as the guides' DGD
example does; graph B sets none (so its services share the derived ``<k8s-namespace>-<graph>``)."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_procs import runner

from tests.support.graph import complete, get_json, worker_completed
from tests.support.procs import wait_until

pytestmark = pytest.mark.timeout(240)
MODEL = "scoped-shared-model"  # served by both graphs


def graph_doc(
    name: str, model_dir: Path, workers: int, front_ns: str | None, worker_ns: str | None
) -> dict[str, Any]:
    def ns(value: str | None) -> dict[str, str]:
        return {"dynamoNamespace": value} if value else {}

    mocker = (
        f"exec python3 -m dynamo.mocker --model-path {model_dir} --served-model-name {MODEL} "
        "--speedup-ratio 20 --no-kv-events"
    )
    return {
        "apiVersion": "nvidia.com/v1alpha1",
        "kind": "DynamoGraphDeployment",
        "metadata": {"name": name},
        "spec": {
            "services": {
                "Frontend": {
                    "componentType": "frontend",
                    **ns(front_ns),
                    "extraPodSpec": {
                        "mainContainer": {
                            "image": "unused:locally",
                            "command": ["python3", "-m", "dynamo.frontend"],
                            "args": ["--http-host", "127.0.0.1", "--http-port", "8000"],
                        }
                    },
                },
                "Worker": {
                    "componentType": "worker",
                    **ns(worker_ns),
                    "replicas": workers,
                    "extraPodSpec": {
                        "mainContainer": {
                            "image": "unused:locally",
                            "command": ["/bin/bash", "-c"],
                            "args": [mocker],
                        }
                    },
                },
            }
        },
    }


def table_ports(text: str, service: str) -> list[int]:
    """PORT column of ``service``'s rows in the runner's last status table."""
    last_table = text[text.rindex("SERVICE") :]
    return [int(m.group(1)) for m in re.finditer(rf"^{service}\s+\d+\s+\d+\s+(\d+)\s", last_table, re.M)]


def run_args(tmp_path: Path, tag: str, doc: dict[str, Any]) -> list[str]:
    path = tmp_path / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(doc))
    run_dir = tmp_path / f"run-{tag}"
    return [str(path), "--port", "0", "--grace", "10", "--run-dir", str(run_dir), "--ready-timeout", "120"]


def frontend_url(text: str) -> str:
    found = re.search(r"frontend: (http://127\.0\.0\.1:\d+)", text)
    assert found, text
    return found.group(1)


def test_two_graphs_on_one_etcd_use_only_their_own_workers(
    tmp_path: Path, clean_env: dict, etcd, smollm2_tokenizer_dir: Path
) -> None:
    env = {**clean_env, "ETCD_ENDPOINTS": etcd.endpoint, "DYN_LOG": "info"}
    doc_a = graph_doc("graph-a", smollm2_tokenizer_dir, 2, front_ns="front-a", worker_ns="team-a")
    doc_b = graph_doc("graph-b", smollm2_tokenizer_dir, 1, front_ns=None, worker_ns=None)
    with runner(run_args(tmp_path, "a", doc_a), tmp_path / "out-a.txt", env) as rp_a:
        text_a = rp_a.wait_for_text("is ready", 130)
        # Graph B starts while A runs: both graphs' workers are in etcd under one model name.
        with runner(run_args(tmp_path, "b", doc_b), tmp_path / "out-b.txt", env) as rp_b:
            text_b = rp_b.wait_for_text("is ready", 130)
            front = {"a": frontend_url(text_a), "b": frontend_url(text_b)}
            workers = {"a": table_ports(text_a, "Worker"), "b": table_ports(text_b, "Worker")}
            assert len(workers["a"]) == 2 and len(workers["b"]) == 1, (text_a, text_b)

            # Every worker of both graphs is registered (its readiness is its /health) ...
            for ports in workers.values():
                for port in ports:
                    assert get_json(f"http://127.0.0.1:{port}/health")["status"] == "healthy"
            # ... and each frontend lists only its own graph's.
            for tag, want in (("a", 2), ("b", 1)):
                wait_until(
                    lambda t=tag, w=want: len(get_json(f"{front[t]}/health").get("instances", [])) == w,
                    15,
                    f"graph {tag}'s frontend to list its {want} workers",
                )
                assert [m["id"] for m in get_json(f"{front[tag]}/v1/models")["data"]] == [MODEL]

            # Requests to each frontend land only on that graph's workers.
            complete(front["a"], MODEL, 6)
            complete(front["b"], MODEL, 4)
            counts = {tag: [worker_completed(p) for p in ports] for tag, ports in workers.items()}
            assert sum(counts["a"]) == 6 and sum(counts["b"]) == 4, counts
            assert all(c > 0 for c in counts["a"]), counts  # both of A's workers take requests

            assert rp_b.stop(signal.SIGTERM, timeout=30) == 0
        # Graph B gone: A's frontend serves on from its own workers, as it did all along.
        complete(front["a"], MODEL, 2)
        assert sum(worker_completed(p) for p in workers["a"]) == 8
        assert rp_a.stop(signal.SIGTERM, timeout=30) == 0
