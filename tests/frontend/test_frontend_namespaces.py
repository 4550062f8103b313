"""Frontends scoped to Dynamo namespaces (``--namespace a,b`` / ``DYN_DISCOVERY_NAMESPACES`` /
``--all-namespaces``): real etcd, real mocker workers in three namespaces serving one model name,
real frontend processes. A scoped frontend lists and routes to its own namespaces' workers only
(counted on each worker's /metrics), even when another namespace's card for the same name differs;
an unscoped one sees every namespace (and refuses the differing card, as it always has)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dynamo.frontend.args import FrontendConfig, build_parser
from tests.support.graph import Frontend, complete, discovery_env, get_json, start_mocker, worker_completed
from tests.support.procs import ManagedProcess, free_port, wait_until

MODEL = "ns-scoped-mock"


# -- the flags ------------------------------------------------------------------------------------


def config(monkeypatch: pytest.MonkeyPatch, *argv: str, env: str | None = None) -> FrontendConfig:
    if env is None:
        monkeypatch.delenv("DYN_DISCOVERY_NAMESPACES", raising=False)
    else:
        monkeypatch.setenv("DYN_DISCOVERY_NAMESPACES", env)
    args: argparse.Namespace = build_parser().parse_args(list(argv))
    return FrontendConfig.from_args(args)


def test_namespace_flag_env_and_all_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_NAMESPACE", "own")
    default = config(monkeypatch)
    assert default.discovery_namespaces is None and default.namespace_filter is None
    assert default.runtime.namespace == "own"

    flag = config(monkeypatch, "--namespace", "team-a, team-b,team-a")
    assert flag.discovery_namespaces == ("team-a", "team-b")
    assert flag.namespace_filter == "team-a,team-b"
    assert flag.runtime.namespace == "team-a"  # the first is the frontend's own

    from_env = config(monkeypatch, env="x,y")
    assert from_env.discovery_namespaces == ("x", "y")
    assert from_env.runtime.namespace == "own"
    assert config(monkeypatch, "--namespace", "z", env="x,y").discovery_namespaces == ("z",)
    assert config(monkeypatch, "--all-namespaces", env="x,y").discovery_namespaces is None
    assert config(monkeypatch, env=" ").discovery_namespaces is None


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (("--namespace", "a/b"), None, "--namespace: invalid namespace"),
        (("--namespace", ","), None, "--namespace names no Dynamo namespace"),
        ((), "ok,not ok", "DYN_DISCOVERY_NAMESPACES: invalid namespace"),
        (("--namespace", "a", "--all-namespaces"), None, "contradict"),
    ],
)
def test_bad_namespace_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...], env: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        config(monkeypatch, *argv, env=env)


# -- real processes -------------------------------------------------------------------------------


def listed(frontend: Frontend) -> list[str]:
    """The namespaces of the instances the frontend serves, one entry per instance."""
    return sorted(i["endpoint"].removeprefix("dyn://").split(".")[0] for i in frontend.health()["instances"])


@pytest.mark.timeout(240)
def test_scoped_frontends_use_only_their_namespaces_workers(
    log_dir: Path, smollm2_tokenizer_dir: Path, etcd
) -> None:
    env = discovery_env("etcd", etcd.endpoint)
    started: list[ManagedProcess | Frontend] = []
    ports: dict[str, list[int]] = {"team-a": [], "team-b": [], "team-c": []}

    def worker(ns: str, *extra: str) -> None:
        port = free_port()
        started.append(
            start_mocker(
                log_dir,
                {**env, "DYN_NAMESPACE": ns},
                smollm2_tokenizer_dir,
                f"mocker-{ns}-{len(ports[ns])}",
                "--model-name",
                MODEL,
                "--speedup-ratio",
                "20",
                "--no-kv-events",
                *extra,
                system_port=port,
            )
        )
        ports[ns].append(port)

    def frontend(name: str, *args: str, **extra_env: str) -> Frontend:
        f = Frontend(log_dir, {**env, **extra_env}, *args, name=name)
        started.append(f)
        return f

    try:
        worker("team-a")
        worker("team-a")
        worker("team-b", "--block-size", "32")  # same name, a different card: a checksum mismatch
        worker("team-c")  # same name and card as team-a
        scoped_a = frontend("frontend-team-a", "--namespace", "team-a")
        scoped_b = frontend("frontend-team-b", DYN_DISCOVERY_NAMESPACES="team-b")
        everything = frontend("frontend-all")

        scoped_a.wait_for_instances(2)
        scoped_b.wait_for_instances(1)
        everything.wait_for_instances(3)
        everything.proc.wait_for_log("refusing instance", timeout=15)
        assert listed(scoped_a) == ["team-a", "team-a"]
        assert listed(scoped_b) == ["team-b"]
        # Discovery is listed by key, so team-a's card is the first one the unscoped frontend takes.
        assert listed(everything) == ["team-a", "team-a", "team-c"]
        for f in (scoped_a, scoped_b):
            assert [m["id"] for m in get_json(f"{f.url}/v1/models")["data"]] == [MODEL]
            assert "refusing" not in f.proc.log_text(), f.proc.tail()

        complete(scoped_a.url, MODEL, 6)
        complete(scoped_b.url, MODEL, 4)
        counts = {ns: [worker_completed(p) for p in ps] for ns, ps in ports.items()}
        assert counts == {"team-a": [3, 3], "team-b": [4], "team-c": [0]}, counts

        complete(everything.url, MODEL, 3)  # round-robin over team-a's two workers and team-c's
        counts = {ns: [worker_completed(p) for p in ps] for ns, ps in ports.items()}
        assert counts == {"team-a": [4, 4], "team-b": [4], "team-c": [1]}, counts

        # Workers that go stay gone for their own frontend only.
        started[3].stop()  # team-c's worker
        wait_until(lambda: listed(everything) == ["team-a", "team-a"], 15, "team-c's worker to go")
        assert listed(scoped_a) == ["team-a", "team-a"] and listed(scoped_b) == ["team-b"]
    finally:
        for proc in reversed(started):
            proc.stop()
