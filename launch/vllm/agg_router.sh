#!/usr/bin/env bash
# Aggregated serving with KV-aware routing: one frontend (--router-mode kv: each request goes to
# the worker that already caches most of its prompt, weighed against that worker's load) + WORKERS
# vLLM workers (default 2) that publish their KV cache events.
#   MODEL=<hf folder or hub name>   default: the prepared SmolLM2-135M-Instruct (CPU friendly)
#   HTTP_PORT=8000                  frontend port
#   WORKERS=2                       vLLM engines (~3.8 GiB of memory each for SmolLM2 on CPU)
#   SYSTEM_PORT=9090                worker i serves /health and /metrics on SYSTEM_PORT + i
#   ROUTER_ARGS="..."               extra frontend flags, e.g. "--router-temperature 0.5"
# Extra arguments go to every worker (any vLLM engine flag), e.g.:  launch/vllm/agg_router.sh --max-model-len 2048
# CPU builds: worker i is bound to core i mod nproc (--cpu-core, i.e. VLLM_CPU_OMP_THREADS_BIND).
# See which worker served a request:  curl -H 'x-dynamo-routing-debug: 1' -i http://127.0.0.1:8000/v1/...
# Starts etcd and NATS only if none is reachable (else uses the single-machine defaults), and
# stops everything it started on exit.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

MODEL=${MODEL:-$(default_model)}
HTTP_PORT=${HTTP_PORT:-8000}
WORKERS=${WORKERS:-2}
SYSTEM_PORT=${SYSTEM_PORT:-9090}
CORES=$(nproc)
ensure_etcd
ensure_nats

# shellcheck disable=SC2086  # ROUTER_ARGS is a list of flags
run frontend "$PYTHON" -m dynamo.frontend --http-port "$HTTP_PORT" --router-mode kv ${ROUTER_ARGS:-}
for i in $(seq 0 $((WORKERS - 1))); do
  DYN_SYSTEM_PORT=$((SYSTEM_PORT + i)) run "worker-$i" \
    "$PYTHON" -m dynamo.vllm --model "$MODEL" --cpu-core $((i % CORES)) "$@"
done

echo "frontend: http://127.0.0.1:$HTTP_PORT (Ctrl-C stops everything)"
wait -n
