"""A stand-in service process for runner tests: serves HTTP 200 on its port, logs a
"Worker ... initialized" line once up, and records how it was stopped.

    python fake_component.py [--http-port N] [--ready-after S] [--crash-after S] [--ignore-term]

The port is --http-port, else DYN_HTTP_PORT, else DYN_SYSTEM_PORT. Events go to $FAKE_MARKER (an
environment variable, not an argument: the runner rewrites /tmp paths in arguments)."""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import sys
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--http-port", type=int)
p.add_argument("--ready-after", type=float, default=0.2)
p.add_argument("--crash-after", type=float)
p.add_argument("--ignore-term", action="store_true")
args = p.parse_args()
port = args.http_port or int(os.environ.get("DYN_HTTP_PORT") or os.environ["DYN_SYSTEM_PORT"])


def mark(text: str) -> None:
    marker = os.environ.get("FAKE_MARKER")
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.environ.get('POD_NAME')} {text}\n")


def on_term(signum: int, frame: object) -> None:
    mark("SIGTERM")
    if not args.ignore_term:
        sys.exit(0)


signal.signal(signal.SIGTERM, on_term)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{os.environ.get('POD_NAME')} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
mark(f"started port={port} ns={os.environ.get('DYN_NAMESPACE')} log={os.environ.get('DYN_LOG')}")
time.sleep(args.ready_after)
print(f"Worker {os.environ.get('POD_NAME')} initialized on port {port}", flush=True)
started = time.monotonic()
while True:
    time.sleep(0.05)
    if args.crash_after is not None and time.monotonic() - started > args.crash_after:
        print("fake component: simulated crash (out of memory)", flush=True)
        sys.exit(3)
