"""``python3 -m dynamo.profiler``: measure an engine, size the smallest graph that meets an SLA,
and write the planner's profile and the generated DynamoGraphDeployment.

    python3 -m dynamo.profiler --request dgdr.yaml --output-dir profiling_results
    python3 -m dynamo.profiler --backend vllm --mocker --model mock --isl 512 --osl 64 \\
        --ttft 200 --itl 20 --request-rate 4 --output-dir out

The request is a DynamoGraphDeploymentRequest (either version, a file or inline JSON) or the same
fields as flags. Exit 0: results written; 1: profiling failed (``error.txt`` says why); 2: a bad
request or flags. With ``--publish-configmap NAME`` (a profiling Job in a cluster) the results also
go into that ConfigMap and the generated graph's planner reads its profile from it; without, from
the output directory.

Journey: before serving: request -> sweep (real engines, real HTTP) -> select -> generate -> results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from dynamo.deploy.request import DeploymentRequest, parse_request
from dynamo.deploy.spec import SpecError
from dynamo.planner.config import ConfigError, PlannerConfig, check_buildable
from dynamo.profiler.engines import Engine, engine
from dynamo.profiler.generate import generate_graph
from dynamo.profiler.measure import MeasureError
from dynamo.profiler.results import publish, write_failure, write_results
from dynamo.profiler.select import Selection, SelectionError, replay_spec, select
from dynamo.profiler.sweep import Measurement, SweepError, measure_candidate, replay_seconds, sweep_plan

log = logging.getLogger("dynamo.profiler")


class ProfilingFailed(RuntimeError):
    """Profiling ran and could not produce a graph; the message says why."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m dynamo.profiler", description=__doc__.split("\n\n")[0])
    p.add_argument("--request", help="a DynamoGraphDeploymentRequest: a YAML/JSON file or inline JSON")
    g = p.add_argument_group("the request as flags (without --request)")
    g.add_argument("--name", default="profiled", help="the generated graph's name")
    g.add_argument("--model", help="model id or local folder")
    g.add_argument("--backend", choices=("vllm", "sglang", "trtllm"), default="vllm")
    g.add_argument("--mocker", action="store_true", help="measure and deploy the simulated engine")
    g.add_argument("--isl", type=int, default=4000)
    g.add_argument("--osl", type=int, default=1000)
    g.add_argument("--ttft", type=float, default=2000.0, help="TTFT target (ms)")
    g.add_argument("--itl", type=float, default=30.0, help="ITL target (ms)")
    load = g.add_mutually_exclusive_group()
    load.add_argument("--request-rate", type=float, help="requests per second to size for")
    load.add_argument("--concurrency", type=float, help="concurrent requests to size for")
    g.add_argument("--optimization", choices=("throughput", "latency"), default="throughput")
    g.add_argument("--search-strategy", choices=("rapid", "thorough"), default="rapid")
    g.add_argument("--planner", help="PlannerConfig fields (JSON) for a planner service in the graph")
    p.add_argument("--batches", help="batch sizes to sweep, comma separated (default: the strategy's)")
    p.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto")
    p.add_argument("--output-dir", type=Path, default=Path("profiling_results"))
    p.add_argument("--publish-configmap", metavar="NAME", help="also write the results into this ConfigMap")
    p.add_argument("--ready-timeout", type=float, default=900.0, help="seconds for an engine to come up")
    p.add_argument(
        "--replay-seconds",
        type=float,
        help="replay the stated workload on each candidate for this long (0: size by the tables only; "
        "default: 60 s, thorough 120 s, a tenth on the mocker)",
    )
    return p


def _load_object(text: str) -> Any:
    path = Path(text)
    try:
        is_file = path.is_file()
    except OSError:
        is_file = False
    if is_file:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        return (
            docs[0]
            if len(docs) == 1
            else next((d for d in docs if d.get("kind") == "DynamoGraphDeploymentRequest"), None)
        )
    return json.loads(text)


def request_from_args(args: argparse.Namespace) -> DeploymentRequest:
    if args.request:
        try:
            obj = _load_object(args.request)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise SpecError(f"--request is neither a readable file nor valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise SpecError("--request must hold one DynamoGraphDeploymentRequest")
        return parse_request(obj)
    if not args.model:
        raise SpecError("give --request, or --model with the request's fields as flags")
    spec: dict[str, Any] = {
        "model": args.model,
        "backend": args.backend,
        "workload": {"isl": args.isl, "osl": args.osl},
        "sla": {"ttft": args.ttft, "itl": args.itl, "optimizationType": args.optimization},
        "searchStrategy": args.search_strategy,
        "features": {"mocker": {"enabled": args.mocker}},
    }
    if args.request_rate is not None:
        spec["workload"]["requestRate"] = args.request_rate
    if args.concurrency is not None:
        spec["workload"]["concurrency"] = args.concurrency
    if args.planner:
        spec["features"]["planner"] = json.loads(args.planner)
    return parse_request({"apiVersion": "nvidia.com/v1beta1", "metadata": {"name": args.name}, "spec": spec})


def check_planner(request: DeploymentRequest, graph: dict[str, Any]) -> None:
    """The generated planner's config must be one the planner accepts (checked here, not at run time)."""
    planner = graph["spec"]["services"].get("Planner")
    if planner is None:
        return
    args = planner["extraPodSpec"]["mainContainer"]["args"]
    try:
        config = PlannerConfig.model_validate({**json.loads(args[1]), "namespace": request.graph_name})
        check_buildable(config)
    except (ConfigError, ValueError) as exc:
        raise SpecError(f"spec.features.planner: {exc}") from None


async def profile(
    request: DeploymentRequest,
    eng: Engine,
    out_dir: Path,
    *,
    batches: list[int] | None = None,
    cluster: bool = False,
    ready_timeout: float = 900.0,
    base_env: dict[str, str] | None = None,
    replay: float | None = None,
) -> tuple[Selection, dict[str, Any]]:
    """Sweep, select, generate and write the results into ``out_dir`` (an absolute path: the local
    graph's planner reads its profile there); ``ProfilingFailed`` when no graph comes out.
    ``replay``: seconds of the stated workload replayed on each candidate (default
    ``sweep.replay_seconds``; 0: none)."""
    seconds = replay_seconds(request, eng) if replay is None else replay
    plan = replace(sweep_plan(request), replay_seconds=seconds)
    candidates = eng.candidates(request.search_strategy, batches)
    log.info(
        "profiling %s (%s, device %s): %s; ISLs %s, contexts %s, %d tokens per decode stream; "
        "the workload replayed for %gs",
        request.model,
        eng.backend,
        eng.device,
        ", ".join(c.label for c in candidates),
        list(plan.isls),
        list(plan.contexts),
        plan.gen,
        plan.replay_seconds,
    )
    spec = replay_spec(request, eng.backend) if plan.replay_seconds > 0 else None
    measurements: list[Measurement] = []
    try:
        for candidate in candidates:
            run_dir = out_dir / "runs" / f"batch-{candidate.batch}"
            measurements.append(
                await measure_candidate(
                    request,
                    eng,
                    candidate,
                    plan,
                    run_dir,
                    ready_timeout=ready_timeout,
                    base_env=base_env,
                    replay=spec,
                )
            )
        selection = select(request, measurements, eng.backend)
        for why in selection.rejected:
            log.warning("rejected %s", why)
    except (SweepError, MeasureError, SelectionError) as exc:
        raise ProfilingFailed(str(exc)) from None
    o = selection.option
    prefill = (o.prefill, o.prefill_replicas) if o.prefill is not None else None
    graph = generate_graph(
        request,
        eng,
        mode=o.mode,
        prefill=prefill,
        decode=(o.decode, o.decode_replicas),
        profile_dir=None if cluster else str(out_dir),
    )
    check_planner(request, graph)
    selected = {
        "request": json.loads(request.to_json()),
        "engine": {"backend": eng.backend, "device": eng.device},
        "selection": o.to_json(request.osl),
        "reason": selection.reason,
        "request_rate": selection.rate,
        "alternatives": [a.to_json(request.osl) for a in selection.alternatives[:10]],
        "rejected": selection.rejected,
        "measurements": [m.to_json() for m in measurements],
        "graph": graph["metadata"]["name"],
    }
    write_results(out_dir, selection.profile, selected, graph)
    return selection, graph


def _owner(request: DeploymentRequest, uid: str | None) -> dict[str, Any] | None:
    if not uid:
        return None
    return {
        "apiVersion": request.api_version,
        "kind": "DynamoGraphDeploymentRequest",
        "name": request.name,
        "uid": uid,
    }


async def amain(args: argparse.Namespace) -> int:
    try:
        request = request_from_args(args)
        batches = [int(b) for b in args.batches.split(",")] if args.batches else None
    except (SpecError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    uid = None
    if args.request:
        obj = _load_object(args.request)
        uid = (obj.get("metadata") or {}).get("uid")
    eng = engine(request, None if args.device == "auto" else args.device)
    out_dir: Path = args.output_dir
    started = time.monotonic()
    code = 0
    try:
        selection, _ = await profile(
            request,
            eng,
            out_dir,
            batches=batches,
            cluster=bool(args.publish_configmap),
            ready_timeout=args.ready_timeout,
            replay=args.replay_seconds,
        )
        sys.stdout.write(
            f"selected: {selection.reason}\nresults: {out_dir} (planner_profile.json, selected_config.json, "
            f"dgd.yaml) after {time.monotonic() - started:.0f}s\n"
        )
    except (ProfilingFailed, SpecError) as exc:
        log.error("profiling failed: %s", exc)
        write_failure(out_dir, str(exc))
        code = 1
    if args.publish_configmap:
        await publish(out_dir, args.publish_configmap, _owner(request, uid))
    return code


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.output_dir = args.output_dir.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(amain(args)))
