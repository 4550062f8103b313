#!/usr/bin/env bash
# Benchmark an OpenAI-compatible deployment (a Dynamo frontend or any other server) over a
# concurrency sweep of streaming chat requests, in the style of the reference's GenAI-Perf script.
#
#   benchmarks/perf.sh MODEL URL [options]
#   benchmarks/perf.sh smollm2 http://localhost:8000 --concurrency 1,8,32,128 --isl 64 --osl 32
#
# Uses aiperf when it is installed, else genai-perf, else our own load generator
# (benchmarks/loadgen.py: raw asyncio + httptools, cheap enough to share the machine it measures).
# --client forces one. Results go to ARTIFACTS_ROOT/artifacts_N/-concurrencyC/ (one folder per
# level) with deployment_config.json beside them; our client also prints a table.
set -euo pipefail

usage() {
  cat <<EOF
Usage: $0 MODEL URL [options]

  MODEL                           served model name (also the tokenizer for aiperf/genai-perf)
  URL                             http://host:port of the OpenAI-compatible server
Options:
  --isl <int>                     input sequence length in tokens (default: $isl; ours: words)
  --osl <int>                     output tokens per request, with ignore_eos (default: $osl)
  --concurrency <list>            comma-separated levels (default: $concurrency_list)
  --tokenizer <name|dir>          tokenizer for aiperf/genai-perf (default: MODEL)
  --duration <s>                  our client: measured seconds per level (default: $duration)
  --warmup <s>                    our client: unmeasured seconds first (default: $warmup)
  --client <aiperf|genai-perf|ours>  which load generator (default: the first one installed)
  --artifacts-root-dir <path>     where results go (default: $artifacts_root_dir)
  --deployment-kind <name>        label stored with the results (default: $deployment_kind)
  --help                          this text
EOF
  exit 0
}

isl=64
osl=32
concurrency_list="1,2,4,8,16,32,64,128"
tokenizer=""
duration=10
warmup=2
client=""
artifacts_root_dir="artifacts_root"
deployment_kind="dynamo"

positional=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --isl|--input-sequence-length) isl="$2"; shift 2 ;;
    --osl|--output-sequence-length) osl="$2"; shift 2 ;;
    --concurrency) concurrency_list="$2"; shift 2 ;;
    --tokenizer) tokenizer="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --client) client="$2"; shift 2 ;;
    --artifacts-root-dir) artifacts_root_dir="$2"; shift 2 ;;
    --deployment-kind) deployment_kind="$2"; shift 2 ;;
    --help|-h) usage ;;
    -*) echo "Unknown option: $1" >&2; exit 1 ;;
    *) positional+=("$1"); shift ;;
  esac
done
if [[ ${#positional[@]} -ne 2 ]]; then
  echo "Usage: $0 MODEL URL [options] (--help for the options)" >&2
  exit 1
fi
model="${positional[0]}"
url="${positional[1]%/}"
tokenizer="${tokenizer:-$model}"

IFS=',' read -r -a concurrency_array <<< "$concurrency_list"
for val in "${concurrency_array[@]}"; do
  if ! [[ "$val" =~ ^[0-9]+$ ]] || [ "$val" -le 0 ]; then
    echo "Error: invalid concurrency value '$val': must be a positive integer." >&2
    exit 1
  fi
done

here="$(cd "$(dirname "$0")" && pwd)"
if [[ -z "$client" ]]; then
  if command -v aiperf >/dev/null 2>&1; then client=aiperf
  elif command -v genai-perf >/dev/null 2>&1; then client=genai-perf
  else client=ours
  fi
fi
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$here/../.venv/bin/python" ]]; then python="$here/../.venv/bin/python"; else python=python3; fi
fi

mkdir -p "$artifacts_root_dir"
index=0
while [ -d "${artifacts_root_dir}/artifacts_${index}" ]; do index=$((index + 1)); done
artifact_dir="${artifacts_root_dir}/artifacts_${index}"
mkdir -p "$artifact_dir"

echo "Benchmarking $url with $client: model $model, ISL $isl, OSL $osl, concurrency ${concurrency_array[*]}"
echo "Results: $artifact_dir"

for concurrency in "${concurrency_array[@]}"; do
  echo "Run concurrency: $concurrency"
  concurrency_dir="${artifact_dir}/-concurrency${concurrency}"
  mkdir -p "$concurrency_dir"
  case "$client" in
    aiperf|genai-perf)
      # ignore_eos both top level (vLLM style) and in nvext (Dynamo), as the reference script does.
      "$client" profile \
        --model "$model" \
        --tokenizer "$tokenizer" \
        --endpoint-type chat \
        --endpoint /v1/chat/completions \
        --streaming \
        --url "$url" \
        --synthetic-input-tokens-mean "$isl" \
        --synthetic-input-tokens-stddev 0 \
        --output-tokens-mean "$osl" \
        --output-tokens-stddev 0 \
        --extra-inputs "max_tokens:${osl}" \
        --extra-inputs "min_tokens:${osl}" \
        --extra-inputs ignore_eos:true \
        --extra-inputs "{\"nvext\":{\"ignore_eos\":true}}" \
        --concurrency "$concurrency" \
        --request-count $((concurrency * 10)) \
        --warmup-request-count $((concurrency * 2)) \
        --num-dataset-entries $((concurrency * 12)) \
        --random-seed 100 \
        --artifact-dir "$concurrency_dir" \
        -H 'Authorization: Bearer NOT USED' \
        -H 'Accept: text/event-stream'
      ;;
    ours)
      "$python" "$here/loadgen.py" --url "$url" --model "$model" --concurrency "$concurrency" \
        --max-tokens "$osl" --isl-words "$isl" --duration "$duration" --warmup "$warmup" \
        --json "${concurrency_dir}/summary.jsonl" | tee "${concurrency_dir}/summary.txt"
      ;;
    *)
      echo "Unknown client: $client (use aiperf, genai-perf or ours)" >&2
      exit 1
      ;;
  esac
done

cat > "${artifact_dir}/deployment_config.json" <<EOF
{
  "kind": "${deployment_kind}",
  "model": "${model}",
  "url": "${url}",
  "client": "${client}",
  "input_sequence_length": ${isl},
  "output_sequence_length": ${osl},
  "concurrency": "${concurrency_list}"
}
EOF
echo "Benchmarking Successful!!!"
