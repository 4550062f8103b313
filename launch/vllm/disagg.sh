#!/usr/bin/env bash
# Disaggregated serving: one frontend + one vLLM prefill worker + one vLLM decode worker; the prompt's
# KV cache moves from the prefill engine to the decode engine over NIXL (vLLM's NixlConnector, which
# both workers configure themselves: no --kv-transfer-config needed).
#   MODEL=<hf folder or hub name>   default: the prepared SmolLM2-135M-Instruct (CPU friendly)
#   HTTP_PORT=8000                  frontend port
#   DISAGGREGATION_STRATEGY=prefill_first|decode_first   (frontend; default prefill_first)
# Extra arguments go to both workers (any vLLM engine flag), e.g.:  launch/vllm/disagg.sh --max-model-len 2048
# On the CPU build each engine gets its own core (prefill: core 0, decode: core 1; override with
# PREFILL_CORE / DECODE_CORE), and the connector moves blocks of 128 tokens: prompts shorter than
# --max-local-prefill-length (frontend, default 256 tokens) are prefilled on the decode worker.
# Starts etcd and NATS only if none is reachable (else uses the single-machine defaults), and
# stops everything it started on exit.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

MODEL=${MODEL:-$(default_model)}
HTTP_PORT=${HTTP_PORT:-8000}
ensure_etcd
ensure_nats

run frontend "$PYTHON" -m dynamo.frontend --http-port "$HTTP_PORT"
DYN_SYSTEM_PORT=${DECODE_SYSTEM_PORT:-9090} run decode \
  "$PYTHON" -m dynamo.vllm --model "$MODEL" --cpu-core "${DECODE_CORE:-1}" "$@"
DYN_SYSTEM_PORT=${PREFILL_SYSTEM_PORT:-9091} run prefill \
  "$PYTHON" -m dynamo.vllm --model "$MODEL" --is-prefill-worker --cpu-core "${PREFILL_CORE:-0}" "$@"

echo "frontend: http://127.0.0.1:$HTTP_PORT (Ctrl-C stops everything)"
wait -n
