"""``--config``: the reference's field names and aliases, unknown fields refused, what is not built
refused by name; the profile file format; the example graph."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

from dynamo.deploy.plan import plan_graph
from dynamo.deploy.spec import load_graph_file
from dynamo.planner.config import ConfigError, load_config
from dynamo.planner.profile import (
    PerformanceProfile,
    ProfileError,
    load_profile,
    parse_profile,
    write_profile,
)
from tests.support.procs import free_port, http_ok, wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "examples" / "planner" / "mocker" / "agg_planner.yaml"
NO_OVERRIDE: dict[str, str] = {}


def load(data: dict, environ: dict[str, str] | None = None):
    return load_config(json.dumps(data), NO_OVERRIDE if environ is None else environ)


def test_reference_fields_and_defaults() -> None:
    c = load({"environment": "virtual"})
    assert (c.backend, c.mode, c.optimization_target) == ("vllm", "disagg", "throughput")
    assert (c.throughput_adjustment_interval_seconds, c.max_gpu_budget, c.min_endpoint) == (180, 8, 1)
    assert (c.ttft_ms, c.itl_ms) == (500, 50)
    assert c.roles == ("prefill", "decode") and c.interval == 5  # reactive targets use the load interval
    sla = load(
        {
            "environment": "virtual",
            "optimization_target": "sla",
            "throughput_adjustment_interval": 60,
            "ttft": 200,
            "itl": 20,
        }
    )
    assert (sla.throughput_adjustment_interval_seconds, sla.ttft_ms, sla.itl_ms, sla.interval) == (
        60,
        200,
        20,
        60,
    )
    assert load({"environment": "virtual", "mode": "agg"}).roles == ("decode",)


def test_yaml_file_and_environment_override(tmp_path: Path) -> None:
    path = tmp_path / "planner.yaml"
    path.write_text("environment: kubernetes\nmode: agg\nbackend: mocker\n")
    assert load_config(str(path), NO_OVERRIDE).environment == "kubernetes"
    c = load_config(str(path), {"DYN_PLANNER_ENVIRONMENT": "virtual"})
    assert (c.environment, c.mode, c.backend) == ("virtual", "agg", "mocker")


def test_unknown_field_is_an_error() -> None:
    with pytest.raises(ConfigError, match="adjustment_intervall: unknown field"):
        load({"environment": "virtual", "adjustment_intervall": 10})


def test_bad_values_are_errors() -> None:
    with pytest.raises(ConfigError, match="mode"):
        load({"environment": "virtual", "mode": "split"})
    with pytest.raises(ConfigError, match="decode_scale_up_kv_rate"):
        load({"environment": "virtual", "mode": "agg", "optimization_target": "load"})
    with pytest.raises(ConfigError, match="greater than"):
        load(
            {
                "environment": "virtual",
                "mode": "agg",
                "optimization_target": "load",
                "decode_scale_up_kv_rate": 10,
                "decode_scale_down_kv_rate": 20,
            }
        )
    with pytest.raises(ConfigError, match="neither a readable file nor valid JSON"):
        load_config("{not json", NO_OVERRIDE)


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"load_predictor": "arima"}, "statsmodels"),
        ({"load_predictor": "prophet"}, "prophet package"),
        ({"load_predictor": "lstm"}, "must be one of"),
        ({"environment": "global-planner"}, "global planner"),
        ({"throughput_metrics_source": "router"}, "router-side"),
        ({"optimization_target": "sla", "enable_load_scaling": True}, "forward-pass-metric regression"),
        ({"live_dashboard_port": 9999}, "live dashboard"),
        ({"min_gpu_budget": 2}, "GPU floor"),
    ],
)
def test_what_is_not_built_is_refused_by_name(fields: dict, missing: str) -> None:
    with pytest.raises(ConfigError, match=missing):
        load({"environment": "virtual", **fields})


PROFILE_DOC = {
    "format": "dynamo-planner-profile/1",
    "backend": "mocker",
    "prefill": {"engine_num_gpu": 1, "points": [{"isl": 1000, "ttft_ms": 100}, {"isl": 100, "ttft_ms": 10}]},
    "decode": {"engine_num_gpu": 2, "points": [{"context": 1000, "concurrency": 1, "itl_ms": 10}]},
}


def test_profile_round_trip(tmp_path: Path) -> None:
    profile = parse_profile(PROFILE_DOC)
    assert profile.prefill is not None and profile.prefill.isl == (100, 1000)  # sorted
    path = tmp_path / "profiling_results" / "planner_profile.json"
    write_profile(path, profile)
    again = load_profile(path)
    assert again == profile
    c = load({"environment": "virtual", "profile_results_dir": str(path.parent)})
    assert c.profile_path() == path
    assert load({"environment": "virtual", "profile_results_dir": str(path)}).profile_path() == path


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"format": "other"}, "format"),
        ({"format": "dynamo-planner-profile/1"}, "needs a prefill or a decode table"),
        ({**PROFILE_DOC, "prefill": {"points": [{"isl": 0, "ttft_ms": 1}]}}, "isl must be a positive number"),
        ({**PROFILE_DOC, "prefill": {"points": []}}, "prefill.points is empty"),
        (
            {**PROFILE_DOC, "decode": {"points": [{"context": 1, "concurrency": 1, "itl_ms": 1}] * 2}},
            "a second point",
        ),
    ],
)
def test_bad_profiles_say_what_is_wrong(doc: dict, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse_profile(doc)


def test_missing_profile_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"planner_profile\.json"):
        load_profile(tmp_path / "planner_profile.json")
    assert isinstance(parse_profile(PROFILE_DOC), PerformanceProfile)


def test_planner_process_exits_2_with_the_reason() -> None:
    env = {**os.environ, "DYN_PLANNER_ENVIRONMENT": ""}
    done = subprocess.run(
        [sys.executable, "-m", "dynamo.planner", "--config", '{"environment": "virtual", "bogus": 1}'],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "bogus: unknown field" in done.stderr + done.stdout
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynamo.planner",
            "--config",
            '{"environment": "virtual", "optimization_target": "sla", "profile_results_dir": "/nonexistent"}',
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "/nonexistent/planner_profile.json" in done.stderr + done.stdout


def test_example_graph_validates_and_plans_the_planner(tmp_path: Path) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    crd = yaml.safe_load((ROOT / "deploy" / "crds" / "nvidia.com_dynamographdeployments.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    jsonschema.validate(doc, version["schema"]["openAPIV3Schema"])
    plan = plan_graph(load_graph_file(EXAMPLE), tmp_path, http_port=0, base_env={"PATH": "/usr/bin"})
    (planner,) = [p for p in plan.processes if p.component_type == "planner"]
    (frontend,) = plan.frontends()
    assert planner.env["DYN_PLANNER_ENVIRONMENT"] == "virtual"
    assert planner.env["DYN_PLANNER_FRONTEND_METRICS"] == f"http://127.0.0.1:{frontend.port}/metrics"
    (pools,) = plan.scaled
    assert (pools.planner, pools.namespace, pools.services) == (
        "Planner",
        "cpu-agg-planner",
        {"decode": "MockerWorker"},
    )
    # The planner's config in the example is valid as the runner starts it.
    config_arg = planner.argv[planner.argv.index("--config") + 1]
    c = load_config(config_arg, {"DYN_PLANNER_ENVIRONMENT": "virtual"})
    assert (c.mode, c.optimization_target, c.max_gpu_budget) == ("agg", "load", 3)
    # A new replica gets the next index, its own port and directory.
    extra = plan.add_replica("MockerWorker", 1)
    worker = next(p for p in plan.processes if p.service == "MockerWorker")
    assert extra.replica == 1 and extra.port != worker.port and extra.tmp_dir != worker.tmp_dir
    assert extra.env["DYN_SYSTEM_PORT"] == str(extra.port)


def test_planner_process_serves_health_metrics_status_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DYN_PLANNER_ENVIRONMENT": "virtual",
        "DYN_NAMESPACE": "planner-alone",
        "DYN_DISCOVERY_BACKEND": "file",
        "DYN_FILE_DISCOVERY_DIR": str(tmp_path / "discovery"),
        "DYN_SYSTEM_PORT": str(port),
        "ETCD_ENDPOINTS": "",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dynamo.planner",
            "--config",
            '{"mode": "agg", "load_adjustment_interval_seconds": 1}',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
        text=True,
    )
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 30, "the planner's /health")
        # Registered in discovery like the other components: dyn://planner-alone.planner.status.
        keys = list((tmp_path / "discovery" / "keys").rglob("*"))
        assert any("planner-alone/planner/status" in str(k) for k in keys), keys
        wait_until(
            lambda: (
                "dynamo_planner_decisions_total{"
                in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            ),
            10,
            "a first decision in /metrics",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=10)[0]
    assert "planner decision 1: decode 0 -> 1 (ready 0)" in out, out
