"""The local runner (python3 -m dynamo.deploy run) with real processes: readiness from the
manifest's probes, unique ports and private /tmp per replica, Ctrl-C/SIGTERM stopping the whole
graph, SIGKILL after the grace period, crashes reported with the tail of the log."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from k8s_procs import pid_alive, runner

FAKE = Path(__file__).with_name("fake_component.py")
pytestmark = pytest.mark.timeout(90)


def worker(replicas: int = 2, extra: str = "", probe: bool = True) -> dict:
    svc: dict = {
        "componentType": "worker",
        "replicas": replicas,
        "envs": [{"name": "DYN_LOG", "value": "debug"}],
        "extraPodSpec": {
            "mainContainer": {
                "image": "unused:locally",
                "command": ["/bin/bash", "-c"],
                "args": [f"exec python3 {FAKE} {extra} > >(tee /tmp/worker.log) 2>&1"],
            }
        },
    }
    if probe:
        svc["readinessProbe"] = {
            "exec": {"command": ["/bin/sh", "-c", 'grep "Worker.*initialized" /tmp/worker.log']},
            "periodSeconds": 0.2,
        }
    return svc


def frontend(marker: Path) -> dict:
    return {
        "componentType": "frontend",
        "dynamoNamespace": "local-test",
        "extraPodSpec": {
            "mainContainer": {
                "image": "unused:locally",
                "command": ["python3", str(FAKE)],
                "args": ["--http-port", "8000"],
            }
        },
    }


def write_graph(path: Path, services: dict, envs: list | None = None) -> Path:
    marker = path.parent / "marker.txt"
    envs = [*(envs or [{"name": "DYN_LOG", "value": "info"}]), {"name": "FAKE_MARKER", "value": str(marker)}]
    doc = {
        "apiVersion": "nvidia.com/v1alpha1",
        "kind": "DynamoGraphDeployment",
        "metadata": {"name": "local-test"},
        "spec": {"envs": envs, "services": services},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def pids_from_table(text: str) -> list[int]:
    return sorted({int(m.group(1)) for m in re.finditer(r"^\S+\s+\d+\s+(\d+)\s+\d+\s", text, re.M)})


def processes_mentioning(fragment: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in text:
            found.append(text)
    return found


def test_runner_serves_graph_and_sigterm_stops_every_process(tmp_path: Path, clean_env: dict) -> None:
    marker = tmp_path / "marker.txt"
    graph = write_graph(
        tmp_path / "graph.yaml",
        {"Frontend": frontend(marker), "Worker": worker(2, "--ready-after 0.5")},
    )
    run_dir = tmp_path / "run"
    with runner(
        [str(graph), "--port", "0", "--grace", "5", "--run-dir", str(run_dir)],
        tmp_path / "out.txt",
        clean_env,
    ) as r:
        text = r.wait_for_text("is ready", 30)
        url = re.search(r"frontend: (http://127\.0\.0\.1:\d+)", text)
        assert url, text
        body = urllib.request.urlopen(url.group(1) + "/v1/models", timeout=5).read().decode()
        assert body == "local-test-frontend-0 /v1/models"

        started = marker.read_text().splitlines()
        ports = {line.split("port=")[1].split()[0] for line in started if "started" in line}
        assert len(ports) == 3, started  # frontend + two workers, each on its own port
        assert any("ns=local-test " in line for line in started), started  # dynamoNamespace
        assert all("log=debug" in line for line in started if "worker" in line), started  # service envs win
        assert any("frontend-0" in line and "log=info" in line for line in started), started  # spec.envs
        # Each worker's /tmp is its own: one log per replica, each naming only its replica.
        logs = sorted(run_dir.glob("worker-*/tmp/worker.log"))
        assert [p.parent.parent.name for p in logs] == ["worker-0", "worker-1"]
        for i, log in enumerate(logs):
            assert f"local-test-worker-{i} initialized" in log.read_text()
        pids = pids_from_table(text)
        assert len(pids) == 3, text
        assert processes_mentioning(str(run_dir)), "the tee processes should be running"

        assert r.stop(signal.SIGTERM) == 0
    out = r.text()
    assert "stopping 3 processes" in out
    assert marker.read_text().count("SIGTERM") == 3
    assert not processes_mentioning(str(run_dir)), "a tee outlived the graph"
    assert not [pid for pid in pids if pid_alive(pid)]


def test_runner_ctrl_c_stops_the_graph(tmp_path: Path, clean_env: dict) -> None:
    marker = tmp_path / "marker.txt"
    graph = write_graph(tmp_path / "graph.yaml", {"Worker": worker(1)})
    with runner([str(graph), "--port", "0", "--grace", "5"], tmp_path / "out.txt", clean_env) as r:
        r.wait_for_text("is ready", 30)
        assert r.stop(signal.SIGINT) == 0
    assert "SIGTERM" in marker.read_text()


def test_runner_kills_a_process_that_ignores_sigterm_after_the_grace_period(
    tmp_path: Path, clean_env: dict
) -> None:
    marker = tmp_path / "marker.txt"
    graph = write_graph(tmp_path / "graph.yaml", {"Worker": worker(1, "--ignore-term")})
    with runner([str(graph), "--port", "0", "--grace", "1.5"], tmp_path / "out.txt", clean_env) as r:
        text = r.wait_for_text("is ready", 30)
        (pid,) = pids_from_table(text)
        t0 = time.monotonic()
        assert r.stop(signal.SIGTERM) == 0
        took = time.monotonic() - t0
    assert "SIGTERM" in marker.read_text()  # it was asked first
    assert 1.4 < took < 10, took
    assert not pid_alive(pid)


def test_runner_reports_a_crash_with_the_log_tail_and_stops_the_rest(tmp_path: Path, clean_env: dict) -> None:
    marker = tmp_path / "marker.txt"
    graph = write_graph(
        tmp_path / "graph.yaml",
        {"Frontend": frontend(marker), "Worker": worker(1, "--crash-after 3.0")},
    )
    with runner([str(graph), "--port", "0", "--grace", "5"], tmp_path / "out.txt", clean_env) as r:
        r.wait_for_text("is ready", 30)
        assert r.proc.wait(30) == 1
    out = r.text()
    assert "Worker[0] exited with code 3" in out
    assert "simulated crash (out of memory)" in out
    assert "frontend-0 SIGTERM" in marker.read_text()  # the rest of the graph was stopped


def test_runner_ready_timeout_names_what_is_not_ready(tmp_path: Path, clean_env: dict) -> None:
    svc = worker(1)
    svc["readinessProbe"] = {
        "exec": {"command": ["/bin/sh", "-c", "grep NEVER /tmp/worker.log"]},
        "periodSeconds": 0.2,
    }
    graph = write_graph(tmp_path / "graph.yaml", {"Worker": svc})
    with runner(
        [str(graph), "--port", "0", "--grace", "3", "--ready-timeout", "2"], tmp_path / "out.txt", clean_env
    ) as r:
        assert r.proc.wait(30) == 1
    out = r.text()
    assert "not ready after 2s" in out
    assert "Worker[0] (exec /bin/sh -c grep NEVER" in out
    assert "initialized" in out  # the log tail


def test_runner_rejects_a_file_without_a_graph(tmp_path: Path, clean_env: dict) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with runner([str(bad)], tmp_path / "out.txt", clean_env) as r:
        assert r.proc.wait(20) == 2
    assert "no DynamoGraphDeployment in this file" in r.text()
