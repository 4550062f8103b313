"""A tracing ``NixlConnector`` for ``disagg_bench.py --trace``: times each step of every KV transfer.

Benchmark-only (never used by a served worker). It is ``dynamo.vllm.nixl_connector.NixlConnector``
with the worker's NIXL agent methods wrapped, and writes one JSON line per event to
``$DYN_NIXL_TRACE_DIR/<kv_role>-<pid>.jsonl``:

- ``xfer`` (decode side, one per READ): descriptor preparation (``make_prepped_xfer``), the post
  (``transfer``: wall time, the thread's CPU time, its minor page faults, its wait for a CPU on the
  run queue and its voluntary / forced context switches, the state it returned),
  every completion check until DONE (``check_xfer_state``), NIXL's telemetry for the transfer
  (what vLLM's ``vllm:nixl_xfer_time_seconds`` records), and the engine-step polls around it.
- ``notif`` (prefill side): when each "read done" notification came out of ``get_new_notifs``,
  and the interval since the previous poll.
- ``handshake``: how long the side-channel handshake with a new peer took.

Clock: ``time.perf_counter`` (CLOCK_MONOTONIC), comparable between processes on one machine.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from typing import Any

from dynamo.vllm.nixl_connector import NixlConnector as _DynamoNixlConnector


class _Trace:
    def __init__(self, role: str) -> None:
        directory = os.environ.get("DYN_NIXL_TRACE_DIR", "/tmp")
        os.makedirs(directory, exist_ok=True)
        self._file = open(os.path.join(directory, f"{role}-{os.getpid()}.jsonl"), "a", buffering=1)
        self._lock = threading.Lock()

    def write(self, **record: Any) -> None:
        with self._lock:
            self._file.write(json.dumps(record) + "\n")


def _thread_usage() -> tuple[float, int, float, int, int]:
    """CPU seconds, minor faults, run-queue wait seconds, voluntary and forced context switches."""
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    with open("/proc/thread-self/schedstat") as f:
        run_delay_ns = int(f.read().split()[1])
    return (
        usage.ru_utime + usage.ru_stime,
        usage.ru_minflt,
        run_delay_ns / 1e9,
        usage.ru_nvcsw,
        usage.ru_nivcsw,
    )


class NixlConnector(_DynamoNixlConnector):
    """Dynamo's connector, timing its worker's NIXL calls (see the module docstring)."""

    def __init__(self, vllm_config: Any, role: Any, kv_cache_config: Any = None) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        worker = self.connector_worker
        if worker is None:
            return
        kv_role = str(vllm_config.kv_transfer_config.kv_role)
        self._trace = _Trace(f"{kv_role}-worker")
        self._inflight: dict[int, dict[str, Any]] = {}
        self._polls: list[float] = []  # get_transfer_results calls while transfers are in flight
        self._last_notif_poll = 0.0
        agent = worker.nixl_wrapper
        trace = self._trace
        inflight = self._inflight

        make = agent.make_prepped_xfer

        def make_prepped_xfer(
            op: str, local: Any, local_idx: Any, remote: Any, remote_idx: Any, **kw: Any
        ) -> Any:
            t0 = time.perf_counter()
            handle = make(op, local, local_idx, remote, remote_idx, **kw)
            inflight[id(handle)] = {
                "t_prep": t0,
                "prep_s": time.perf_counter() - t0,
                "n_idx": len(local_idx),
                "notif": bytes(kw.get("notif_msg") or b"").decode(errors="replace"),
            }
            return handle

        post = agent.transfer

        def transfer(handle: Any, *args: Any) -> str:
            rec = inflight.setdefault(id(handle), {})
            cpu0, flt0, wait0, vcsw0, ivcsw0 = _thread_usage()
            t0 = time.perf_counter()
            state = str(post(handle, *args))
            t1 = time.perf_counter()
            cpu1, flt1, wait1, vcsw1, ivcsw1 = _thread_usage()
            rec.update(
                t_post=t0,
                post_s=t1 - t0,
                post_cpu_s=cpu1 - cpu0,
                post_minflt=flt1 - flt0,
                post_runq_s=wait1 - wait0,
                post_vcsw=vcsw1 - vcsw0,
                post_ivcsw=ivcsw1 - ivcsw0,
                post_state=state,
            )
            rec["checks"] = []
            return state

        check = agent.check_xfer_state

        def check_xfer_state(handle: Any) -> str:
            state = str(check(handle))
            rec = inflight.get(id(handle))
            if rec is not None:
                rec.setdefault("checks", []).append(time.perf_counter())
                if state == "DONE":
                    rec["t_done_seen"] = rec["checks"][-1]
            return state

        telemetry = agent.get_xfer_telemetry

        def get_xfer_telemetry(handle: Any) -> Any:
            res = telemetry(handle)
            rec = inflight.pop(id(handle), None)
            if rec is not None:
                checks = rec.pop("checks", [])
                trace.write(
                    event="xfer",
                    pid=os.getpid(),
                    n_checks=len(checks),
                    first_check_after_post_s=(checks[0] - rec["t_post"])
                    if checks and "t_post" in rec
                    else None,
                    tel_xfer_s=res.xferDuration / 1e6,
                    tel_post_s=res.postDuration / 1e6,
                    bytes=int(res.totalBytes),
                    descs=int(res.descCount),
                    **rec,
                )
            return res

        notifs = agent.get_new_notifs

        def get_new_notifs(*args: Any) -> Any:
            now = time.perf_counter()
            result = notifs(*args)
            for remote, msgs in result.items():
                for msg in msgs:
                    trace.write(
                        event="notif",
                        pid=os.getpid(),
                        t=now,
                        since_prev_poll_s=now - self._last_notif_poll if self._last_notif_poll else None,
                        remote=str(remote),
                        msg=bytes(msg).decode(errors="replace"),
                    )
            self._last_notif_poll = now
            return result

        handshake = worker._nixl_handshake

        def nixl_handshake(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return handshake(*args, **kw)
            finally:
                trace.write(event="handshake", pid=os.getpid(), t=t0, s=time.perf_counter() - t0)

        agent.make_prepped_xfer = make_prepped_xfer
        agent.transfer = transfer
        agent.check_xfer_state = check_xfer_state
        agent.get_xfer_telemetry = get_xfer_telemetry
        agent.get_new_notifs = get_new_notifs
        worker._nixl_handshake = nixl_handshake  # type: ignore[method-assign]

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        super().start_load_kv(forward_context, **kwargs)
        if self.connector_worker is not None and self._inflight:
            for rec in self._inflight.values():
                rec.setdefault("t_start_load_kv", t0)

    def get_transfer_results(self, finished_req_ids: set[str]) -> Any:
        t0 = time.perf_counter()
        results = super().get_transfer_results(finished_req_ids)
        if self.connector_worker is not None and (self._inflight or results.finished_recving):
            self._trace.write(
                event="poll",
                pid=os.getpid(),
                t=t0,
                s=time.perf_counter() - t0,
                inflight=len(self._inflight),
                finished_recving=len(results.finished_recving),
            )
        return results
