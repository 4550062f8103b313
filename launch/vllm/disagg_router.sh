#!/usr/bin/env bash
# Disaggregated serving with KV-aware routing: one frontend (--router-mode kv: KV-aware across the
# prefill pool and across the decode pool) + PREFILL_WORKERS vLLM prefill workers (default 2) + one
# vLLM decode worker; the KV moves over NIXL (both sides configure vLLM's NixlConnector themselves).
#   MODEL=<hf folder or hub name>   default: the prepared SmolLM2-135M-Instruct (CPU friendly)
#   HTTP_PORT=8000                  frontend port
#   PREFILL_WORKERS=2               prefill engines (~3.8 GiB of memory each for SmolLM2 on CPU)
#   DISAGGREGATION_STRATEGY=prefill_first|decode_first   (frontend; default prefill_first)
# Extra arguments go to every worker (any vLLM engine flag).
# CPU cores: prefill worker i gets core i, the decode worker the last core (DECODE_CORE). With more
# engines than cores -- three engines on a two-core machine -- core sets overlap: prefill worker 1
# and the decode worker share a core, and each runs slower while the other computes.
# Starts etcd and NATS only if none is reachable, and stops everything it started on exit.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

MODEL=${MODEL:-$(default_model)}
HTTP_PORT=${HTTP_PORT:-8000}
PREFILL_WORKERS=${PREFILL_WORKERS:-2}
CORES=$(nproc)
ensure_etcd
ensure_nats

run frontend "$PYTHON" -m dynamo.frontend --http-port "$HTTP_PORT" --router-mode kv
DYN_SYSTEM_PORT=${DECODE_SYSTEM_PORT:-9090} run decode \
  "$PYTHON" -m dynamo.vllm --model "$MODEL" --cpu-core "${DECODE_CORE:-$((CORES - 1))}" "$@"
for i in $(seq 0 $((PREFILL_WORKERS - 1))); do
  DYN_SYSTEM_PORT=$((${PREFILL_SYSTEM_PORT:-9091} + i)) run "prefill-$i" \
    "$PYTHON" -m dynamo.vllm --model "$MODEL" --is-prefill-worker --cpu-core $((i % CORES)) "$@"
done

echo "frontend: http://127.0.0.1:$HTTP_PORT (Ctrl-C stops everything)"
wait -n
