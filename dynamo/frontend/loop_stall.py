"""Loop stall watch: when the frontend's event loop is held ``threshold`` seconds, log the stack of
the thread that runs it, while it is still held (a diagnostic, off by default:
``DYN_LOOP_STALL_DUMP_MS``, read with the frontend's flags in ``dynamo.frontend.args``).

Journey: beside every stage, as ``dynamo.frontend.loop_lag`` is. The lag monitor's wake-ups call
``beat()``; a daemon thread checks every ``threshold / 2`` whether the last beat is ``threshold``
older than due and, once per stall, takes the loop thread's frame (``sys._current_frames``, under
the GIL, so at most one switch interval after the loop thread runs Python again: inside a C call
that keeps the GIL, its caller shows once the call returns) and logs it as a warning. It tells one
blocking call (the same frame at every stall) from ordinary request work in one long loop
iteration (frames spread over the stages). Cost while on: two GIL hand-offs per ``threshold``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback

log = logging.getLogger(__name__)

HEADER = "event loop held {ms:.0f} ms so far; its thread is at (most recent call last):"


class StallWatch:
    """Logs the loop thread's stack once per stall of ``threshold`` seconds beyond ``interval``
    (the time between beats when the loop is free). ``start()`` on the loop's thread."""

    def __init__(self, threshold: float, interval: float) -> None:
        self.threshold = threshold
        self.interval = interval
        self.stalls = 0
        self._beat = time.monotonic()
        self._loop_thread = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._loop_thread = threading.get_ident()
            self._beat = time.monotonic()
            self._thread = threading.Thread(target=self._watch, name="loop-stall-watch", daemon=True)
            self._thread.start()

    def beat(self) -> None:
        """The loop ran on time up to now (called from the loop's thread)."""
        self._beat = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=1)

    def _watch(self) -> None:
        reported = -1.0  # the beat whose stall was logged
        while not self._stop.wait(self.threshold / 2):
            beat = self._beat
            late = time.monotonic() - beat - self.interval
            if late < self.threshold or beat == reported:
                continue
            frame = sys._current_frames().get(self._loop_thread)
            late = time.monotonic() - beat - self.interval
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "  (no frame)\n"
            reported = beat
            self.stalls += 1
            log.warning("%s\n%s", HEADER.format(ms=late * 1000), stack.rstrip("\n"))
