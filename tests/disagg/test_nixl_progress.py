"""NIXL agents made for vLLM's connector (``dynamo.vllm.nixl_agent``) complete a READ while the remote agent is idle.

A READ that carries a completion notification (vLLM's pull connector sends one with every read)
stays in progress until the *remote* agent progresses UCX. A prefill engine only calls into NIXL on
its own steps, so without a progress thread a decode-side transfer waited for the prefill's next
request. Two real agents in two processes, real UCX; no vLLM engine (and no vLLM import).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection

import pytest

pytest.importorskip("nixl")
np = pytest.importorskip("numpy")

SIZE = 4 << 20
DESCS = 8


def _idle_target(conn: Connection, delay_env: str) -> None:
    """Prefill side: registers its buffer, then does not touch NIXL until told to collect notifications."""
    os.environ["DYN_NIXL_PROGRESS_DELAY_MS"] = delay_env
    from dynamo.vllm.nixl_agent import new_nixl_agent

    agent = new_nixl_agent("prefill-side")
    src = np.full(SIZE, 7, dtype=np.uint8)
    agent.register_memory([(src.ctypes.data, src.nbytes, 0, "")], "DRAM")
    conn.send((agent.get_agent_metadata(), src.ctypes.data))
    conn.recv()  # "collect": from here on it calls into NIXL, as a prefill engine's steps would
    deadline = time.monotonic() + 10
    notifs: list[bytes] = []
    sent = False
    while not conn.poll():  # until "exit"
        for msgs in agent.get_new_notifs().values():
            notifs.extend(msgs)
        if not sent and (notifs or time.monotonic() > deadline):
            conn.send(notifs)
            sent = True
        time.sleep(0.005)
    if not sent:
        conn.send(notifs)
    conn.recv()


def _read_while_remote_idle(delay_env: str, window_s: float) -> tuple[str, list[bytes], bytes]:
    """Post a READ with a notification and poll it for ``window_s`` while the remote stays idle."""
    os.environ["DYN_NIXL_PROGRESS_DELAY_MS"] = delay_env
    from dynamo.vllm.nixl_agent import new_nixl_agent

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_idle_target, args=(child, delay_env), daemon=True)
    proc.start()
    try:
        assert parent.poll(60), "the target process did not start"
        remote_meta, remote_addr = parent.recv()
        agent = new_nixl_agent("decode-side")
        dst = np.zeros(SIZE, dtype=np.uint8)
        agent.register_memory([(dst.ctypes.data, dst.nbytes, 0, "")], "DRAM")
        peer = agent.add_remote_agent(remote_meta)
        step = SIZE // DESCS
        local = agent.prep_xfer_dlist(
            "NIXL_INIT_AGENT", [(dst.ctypes.data + i * step, step, 0) for i in range(DESCS)], "DRAM"
        )
        remote = agent.prep_xfer_dlist(
            peer, [(remote_addr + i * step, step, 0) for i in range(DESCS)], "DRAM"
        )
        idx = np.arange(DESCS)
        handle = agent.make_prepped_xfer("READ", local, idx, remote, idx, notif_msg=b"req-1:1")
        state = agent.transfer(handle)
        deadline = time.monotonic() + window_s
        while state == "PROC" and time.monotonic() < deadline:
            time.sleep(0.005)
            state = agent.check_xfer_state(handle)
        # Let the target progress (as a prefill engine's next step would) and finish the read.
        parent.send("collect")
        end = time.monotonic() + 10
        final = state
        while final == "PROC" and time.monotonic() < end:
            time.sleep(0.005)
            final = agent.check_xfer_state(handle)
        assert final == "DONE", final
        assert parent.poll(30), "the target process did not answer"
        notifs = parent.recv()
        agent.release_xfer_handle(handle)
        parent.send("exit")
        return state, notifs, bytes(dst[:: step // 4][:8])
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def test_read_completes_while_the_remote_agent_is_idle():
    state, notifs, sample = _read_while_remote_idle(delay_env="", window_s=10)
    assert state == "DONE", "the READ waited for the idle remote agent"
    assert notifs == [b"req-1:1"]
    assert sample == bytes([7] * 8)


def test_without_a_progress_thread_the_read_waits_for_the_remote():
    """The failure the progress thread prevents (``DYN_NIXL_PROGRESS_DELAY_MS=off``, the old setting)."""
    state, notifs, sample = _read_while_remote_idle(delay_env="off", window_s=2)
    assert state == "PROC"
    assert notifs == [b"req-1:1"]
    assert sample == bytes([7] * 8)


def test_with_the_progress_thread_ucx_waits_on_a_mutex(monkeypatch: pytest.MonkeyPatch):
    """The thread shares the engine's core with the thread that posts reads: UCX's default spinlock
    would make the waiting one spin through its time slice (``benchmarks/results/disagg_bandwidth.md``)."""
    from dynamo.vllm.nixl_agent import new_nixl_agent

    monkeypatch.setenv("UCX_USE_MT_MUTEX", "")  # recorded, so that the test's changes are undone
    monkeypatch.delenv("UCX_USE_MT_MUTEX")
    monkeypatch.setenv("DYN_NIXL_PROGRESS_DELAY_MS", "10")
    new_nixl_agent("mutex-default")
    assert os.environ["UCX_USE_MT_MUTEX"] == "y"

    monkeypatch.setenv("UCX_USE_MT_MUTEX", "n")
    new_nixl_agent("mutex-set-by-the-user")
    assert os.environ["UCX_USE_MT_MUTEX"] == "n"

    monkeypatch.delenv("UCX_USE_MT_MUTEX")
    monkeypatch.setenv("DYN_NIXL_PROGRESS_DELAY_MS", "off")
    new_nixl_agent("no-progress-thread")
    assert "UCX_USE_MT_MUTEX" not in os.environ
