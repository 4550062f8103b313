# Shared helpers for the launch scripts (sourced, not run).
# - PYTHON: the interpreter (default: the repo's .venv if present, else python3)
# - start etcd / nats-server only when none is reachable and the binary exists; otherwise fall back
#   to the single-machine defaults (file discovery, ZeroMQ events), which need nothing installed
# - everything started here is stopped on exit (trap)

LAUNCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$LAUNCH_ROOT/.venv/bin/python" ]; then
    PYTHON="$LAUNCH_ROOT/.venv/bin/python"
  else
    PYTHON=python3
  fi
fi
export PATH="$(dirname "$(command -v "$PYTHON")"):$PATH"

_PIDS=()
_TMPDIRS=()

_cleanup() {
  trap - EXIT INT TERM
  for pid in "${_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${_PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  for d in "${_TMPDIRS[@]}"; do rm -rf "$d"; done
  return 0
}
trap _cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run NAME CMD...: start a background process (its pid is tracked), prefixing its output with NAME.
run() {
  local name=$1; shift
  "$@" > >(sed -u "s/^/[$name] /") 2>&1 &
  _PIDS+=($!)
}

_reachable() {  # host:port
  (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null
}

ensure_etcd() {
  local ep="${ETCD_ENDPOINTS:-http://127.0.0.1:2379}"
  local hostport="${ep#*://}"; hostport="${hostport%%,*}"
  if _reachable "$hostport"; then
    export ETCD_ENDPOINTS="$ep"; echo "using etcd at $ep"; return
  fi
  if command -v etcd >/dev/null; then
    local dir; dir=$(mktemp -d); _TMPDIRS+=("$dir")
    run etcd etcd --data-dir "$dir" --listen-client-urls "http://127.0.0.1:2379" \
      --advertise-client-urls "http://127.0.0.1:2379" --listen-peer-urls "http://127.0.0.1:2380"
    for _ in $(seq 1 50); do _reachable 127.0.0.1:2379 && break; sleep 0.2; done
    export ETCD_ENDPOINTS="http://127.0.0.1:2379"; echo "started etcd at $ETCD_ENDPOINTS"
  else
    unset ETCD_ENDPOINTS; export DYN_DISCOVERY_BACKEND=file
    echo "no etcd: using file discovery (single machine)"
  fi
}

ensure_nats() {
  local url="${NATS_SERVER:-nats://127.0.0.1:4222}"
  local hostport="${url#*://}"
  if _reachable "$hostport"; then
    export NATS_SERVER="$url"; echo "using NATS at $url"; return
  fi
  if command -v nats-server >/dev/null; then
    local dir; dir=$(mktemp -d); _TMPDIRS+=("$dir")
    run nats nats-server -a 127.0.0.1 -p 4222 -js -sd "$dir"
    for _ in $(seq 1 50); do _reachable 127.0.0.1:4222 && break; sleep 0.2; done
    export NATS_SERVER="nats://127.0.0.1:4222"; echo "started NATS at $NATS_SERVER"
  else
    unset NATS_SERVER; export DYN_EVENT_PLANE=zmq
    echo "no nats-server: using ZeroMQ events (single machine)"
  fi
}

# default_model: the prepared SmolLM2 folder (prepares it on first use).
default_model() {
  "$PYTHON" -m dynamo.models prepare smollm2 --quiet | tail -n 1
}

# wait_for_model URL NAME [TIMEOUT] [PID]: until the frontend lists the model (fails early if PID exits).
wait_for_model() {
  local url=$1 name=$2 timeout=${3:-300} pid=${4:-}
  for _ in $(seq 1 "$timeout"); do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      echo "the server exited before model $name was ready" >&2
      return 1
    fi
    if "$PYTHON" - "$url" "$name" <<'PY' 2>/dev/null; then return 0; fi
import json, sys, urllib.request
data = json.load(urllib.request.urlopen(sys.argv[1] + "/v1/models", timeout=2))
sys.exit(0 if any(m["id"] == sys.argv[2] for m in data["data"]) else 1)
PY
    sleep 1
  done
  echo "timed out waiting for model $name at $url" >&2
  return 1
}
