#!/usr/bin/env bash
# Build a Dynamo container image.
#
#   container/build.sh --framework {vllm,sglang,tensorrtllm,cpu,operator} [--platform linux/amd64|linux/arm64]
#                      [--tag NAME:TAG] [--target runtime|build] [--build-arg KEY=VALUE]... [--base-image IMAGE]
#                      [--no-cache] [--push] [--use-default-experimental-tensorrtllm-commit]
#                      [--backend auto|docker|buildah] [--dry-run]
#
# The default tag is dynamo:<version>-<framework> (version from pyproject.toml), the image name the
# examples in deploy/examples/ use: build, then tag and push it to your registry (or load it into a
# local cluster, e.g. `kind load docker-image dynamo:0.1.0-vllm`). --base-image IMAGE replaces the
# Dockerfile's BASE_IMAGE. Backend: Docker (buildx) when a Docker engine answers, else buildah
# (no daemon; see container/README.md). --dry-run prints the docker command (the buildah one with
# --backend buildah) without building.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FRAMEWORKS="vllm sglang tensorrtllm cpu operator"
PLATFORMS="linux/amd64 linux/arm64"
HOST_MOUNTS=/run/dynamo-host  # where the buildah backend mounts the host's CA bundle and wheel folders

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "build.sh: $*" >&2; echo "run container/build.sh --help for usage" >&2; exit 2; }
note() { echo "build.sh: $*" >&2; }

framework="" platform="linux/amd64" tag="" target="runtime" push=0 dry_run=0 no_cache=0 experimental=0
base_image="" backend="${DYNAMO_BUILD_BACKEND:-auto}"
build_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --framework) [ $# -ge 2 ] && [ "${2#--}" = "$2" ] || die "--framework needs a value"; framework="$(echo "$2" | tr '[:upper:]' '[:lower:]')"; shift 2 ;;
    --framework=*) framework="$(echo "${1#*=}" | tr '[:upper:]' '[:lower:]')"; shift ;;
    --platform) [ $# -ge 2 ] && [ "${2#--}" = "$2" ] || die "--platform needs a value"; platform="$2"; shift 2 ;;
    --platform=*) platform="${1#*=}"; shift ;;
    --tag) [ $# -ge 2 ] && [ "${2#--}" = "$2" ] || die "--tag needs a value"; tag="$2"; shift 2 ;;
    --tag=*) tag="${1#*=}"; shift ;;
    --target) [ $# -ge 2 ] && [ "${2#--}" = "$2" ] || die "--target needs a value"; target="$2"; shift 2 ;;
    --build-arg) [ $# -ge 2 ] && [ "${2#--}" = "$2" ] || die "--build-arg needs KEY=VALUE"; build_args+=("$2"); shift 2 ;;
    --base-image) [ $# -ge 2 ] && [ "${2#--}" = "$2" ] || die "--base-image needs a value"; base_image="$2"; shift 2 ;;
    --base-image=*) base_image="${1#*=}"; shift ;;
    --backend) [ $# -ge 2 ] && [ "${2#--}" = "$2" ] || die "--backend needs a value"; backend="$2"; shift 2 ;;
    --backend=*) backend="${1#*=}"; shift ;;
    --push) push=1; shift ;;
    --no-cache) no_cache=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --use-default-experimental-tensorrtllm-commit) experimental=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

[ -n "$framework" ] || die "--framework is required (one of: $FRAMEWORKS)"
case " $FRAMEWORKS " in *" $framework "*) ;; *) die "unknown framework '$framework' (one of: $FRAMEWORKS)" ;; esac
case " $PLATFORMS " in *" $platform "*) ;; *) die "unsupported platform '$platform' (one of: $PLATFORMS)" ;; esac
case "$target" in runtime|build) ;; *) die "unknown target '$target' (runtime or build)" ;; esac
case "$backend" in auto|docker|buildah) ;; *) die "unknown backend '$backend' (auto, docker or buildah)" ;; esac
if [ "$experimental" = 1 ] && [ "$framework" != tensorrtllm ]; then
  die "--use-default-experimental-tensorrtllm-commit only applies to --framework tensorrtllm"
fi
user_base_arg=0 user_torch_arg=0
for kv in "${build_args[@]+"${build_args[@]}"}"; do
  case "$kv" in *=*) ;; *) die "--build-arg needs KEY=VALUE, got '$kv'" ;; esac
  case "$kv" in BASE_IMAGE=*) user_base_arg=1 ;; TORCH_INDEX_URL=*) user_torch_arg=1 ;; esac
done
if [ -n "$base_image" ] && [ "$user_base_arg" = 1 ]; then die "give --base-image or --build-arg BASE_IMAGE=..., not both"; fi

version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)"
[ -n "$version" ] || die "cannot read the version from pyproject.toml"
[ -n "$tag" ] || tag="dynamo:${version}-${framework}"
dockerfile="$ROOT/container/Dockerfile.$framework"
[ -f "$dockerfile" ] || die "missing $dockerfile"

docker_engine() { command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; }
if [ "$backend" = auto ]; then
  # A dry run shows the docker command wherever it runs; a real build takes what this machine has.
  if [ "$dry_run" = 1 ] || docker_engine || ! command -v buildah >/dev/null 2>&1; then backend=docker; else backend=buildah; fi
fi

args=(--build-arg "DYNAMO_VERSION=$version")
if [ "$experimental" = 1 ]; then args+=(--build-arg "TRTLLM_PRE=1"); fi
if [ -n "$base_image" ]; then args+=(--build-arg "BASE_IMAGE=$base_image"); fi
for kv in "${build_args[@]+"${build_args[@]}"}"; do args+=(--build-arg "$kv"); done
if [ "$no_cache" = 1 ]; then args+=(--no-cache); fi

# ---- docker (buildx) ------------------------------------------------------------------------------
if [ "$backend" = docker ]; then
  cmd=(docker buildx build --platform "$platform" -f "$dockerfile" --target "$target" -t "$tag" "${args[@]}")
  if [ "$push" = 1 ]; then cmd+=(--push); else cmd+=(--load); fi
  cmd+=("$ROOT")
  if [ "$dry_run" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
  command -v docker >/dev/null 2>&1 || { echo "build.sh: docker not found; install Docker with buildx, or buildah (apt-get install buildah debootstrap) for the daemonless backend (or pass --dry-run)" >&2; exit 1; }
  echo "building $tag ($framework, $platform) with docker buildx" >&2
  exec "${cmd[@]}"
fi

# ---- buildah --------------------------------------------------------------------------------------
# chroot isolation (no OCI runtime or daemon), host network, cached layers. RUN steps get the host's
# pip trust and local wheel folders (mounted read-only under $HOST_MOUNTS, never copied into a layer).
dockerfile_default() { sed -n "s/^ARG $1=//p" "$dockerfile" | head -1; }
host_pip_settings() {  # "cert<TAB>path" / "find-links<TAB>dir" lines from the host's pip environment
  python3 - <<'EOF' 2>/dev/null || true
import configparser, os
from pathlib import Path
files = [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf"), Path.home() / ".pip/pip.conf",
         Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "pip/pip.conf"]
if os.environ.get("PIP_CONFIG_FILE"):
    files.append(Path(os.environ["PIP_CONFIG_FILE"]))
conf = {}
for f in files:
    p = configparser.ConfigParser()
    try:
        p.read(f)
    except configparser.Error:
        continue
    for section in ("global", "install"):
        for key in ("cert", "find-links"):
            if p.has_option(section, key):
                conf[key] = p.get(section, key)
for key in ("cert", "find-links"):
    env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
    if env:
        conf[key] = env
cert = conf.get("cert") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
if os.path.isfile(cert):
    print(f"cert\t{cert}")
for link in conf.get("find-links", "").split():
    path = link[len("file://"):] if link.startswith("file://") else link
    if "://" not in path and os.path.isdir(path):
        print(f"find-links\t{os.path.abspath(path)}")
EOF
}

cmd=(buildah bud --isolation chroot --network host --layers --force-rm --pull=false --platform "$platform"
     -f "$dockerfile" --ignorefile "$dockerfile.dockerignore" --target "$target" -t "$tag" "${args[@]}")
links=()
while IFS=$'\t' read -r key value; do
  case "$key" in
    cert) cmd+=(-v "$value:$HOST_MOUNTS/ca.crt:ro" --build-arg "PIP_CERT=$HOST_MOUNTS/ca.crt") ;;
    find-links) cmd+=(-v "$value:$HOST_MOUNTS/find-links/${#links[@]}:ro"); links+=("$HOST_MOUNTS/find-links/${#links[@]}") ;;
  esac
done < <(host_pip_settings)
if [ "${#links[@]}" -gt 0 ]; then cmd+=(--build-arg "PIP_FIND_LINKS=${links[*]}"); fi

# TORCH_INDEX_URL (Dockerfile.cpu): a host that cannot resolve it would cost pip a retry per package.
torch_index="$(dockerfile_default TORCH_INDEX_URL)"
if [ -n "$torch_index" ] && [ "$user_torch_arg" = 0 ]; then
  torch_host="${torch_index#*://}" torch_host="${torch_host%%/*}"
  if ! timeout 10 getent hosts "$torch_host" >/dev/null 2>&1; then
    note "$torch_host does not resolve here: building without TORCH_INDEX_URL (torch $([ "${#links[@]}" -gt 0 ] && echo "from the host's find-links, else ")from PyPI)"
    cmd+=(--build-arg "TORCH_INDEX_URL=")
  fi
fi

if [ "$dry_run" = 1 ]; then printf '%q ' "${cmd[@]}" "$ROOT"; echo; exit 0; fi
command -v buildah >/dev/null 2>&1 || { echo "build.sh: buildah not found (apt-get install buildah debootstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "build.sh: the buildah backend needs root here (chroot isolation); run with sudo" >&2; exit 1; }

# The base image: given, present, pulled, or (for the python-slim Dockerfiles) the local Debian base.
if [ -z "$base_image" ] && [ "$user_base_arg" = 0 ]; then
  default_base="$(dockerfile_default BASE_IMAGE)"
  if ! buildah inspect --type image "$default_base" >/dev/null 2>&1 \
     && ! timeout 900 buildah pull --quiet "$default_base" >/dev/null; then
    case "$default_base" in
      python:*-bookworm)
        note "cannot pull $default_base: using the local Debian base from container/local-base.sh instead"
        local_base="$("$ROOT/container/local-base.sh" | tail -1)"
        cmd+=(--build-arg "BASE_IMAGE=$local_base") ;;
      *)
        echo "build.sh: cannot pull the base image $default_base; pass --base-image IMAGE (container/local-base.sh" \
             "makes a Debian one without CUDA: container/README.md says what that leaves out)" >&2
        exit 1 ;;
    esac
  fi
fi

cmd+=("$ROOT")
echo "building $tag ($framework, $platform) with buildah" >&2
start=$(date +%s)
"${cmd[@]}"
note "built $tag in $(( $(date +%s) - start ))s ($(buildah images --format '{{.Size}}' "$tag" | head -1))"
if [ "$push" = 1 ]; then buildah push "$tag"; fi
