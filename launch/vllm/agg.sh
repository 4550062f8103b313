#!/usr/bin/env bash
# Aggregated serving: one frontend + one vLLM worker (prefill and decode on the same engine).
#   MODEL=<hf folder or hub name>   default: the prepared SmolLM2-135M-Instruct (CPU friendly)
#   HTTP_PORT=8000                  frontend port
# Extra arguments go to the worker (any vLLM engine flag), e.g.:  launch/vllm/agg.sh --max-model-len 2048
# Starts etcd and NATS only if none is reachable (else uses the single-machine defaults), and
# stops everything it started on exit.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

MODEL=${MODEL:-$(default_model)}
HTTP_PORT=${HTTP_PORT:-8000}
ensure_etcd
ensure_nats

run frontend "$PYTHON" -m dynamo.frontend --http-port "$HTTP_PORT"
DYN_SYSTEM_PORT=${DYN_SYSTEM_PORT:-9090} run worker "$PYTHON" -m dynamo.vllm --model "$MODEL" "$@"

echo "frontend: http://127.0.0.1:$HTTP_PORT (Ctrl-C stops everything)"
wait -n
