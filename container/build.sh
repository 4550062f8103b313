#!/usr/bin/env bash
# Build a Dynamo container image.
#
#   container/build.sh --framework {vllm,sglang,tensorrtllm,cpu,operator} [--platform linux/amd64|linux/arm64]
#                      [--tag NAME:TAG] [--target runtime|build] [--build-arg KEY=VALUE]... [--no-cache]
#                      [--push] [--use-default-experimental-tensorrtllm-commit] [--dry-run]
#
# The default tag is dynamo:<version>-<framework> (version from pyproject.toml), the image name the
# examples in deploy/examples/ use: build, then tag and push it to your registry (or load it into a
# local cluster, e.g. `kind load docker-image dynamo:0.1.0-vllm`). --dry-run prints the docker command.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FRAMEWORKS="vllm sglang tensorrtllm cpu operator"
PLATFORMS="linux/amd64 linux/arm64"

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "build.sh: $*" >&2; echo "run container/build.sh --help for usage" >&2; exit 2; }

framework="" platform="linux/amd64" tag="" target="runtime" push=0 dry_run=0 no_cache=0 experimental=0
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
if [ "$experimental" = 1 ] && [ "$framework" != tensorrtllm ]; then
  die "--use-default-experimental-tensorrtllm-commit only applies to --framework tensorrtllm"
fi
for kv in "${build_args[@]+"${build_args[@]}"}"; do
  case "$kv" in *=*) ;; *) die "--build-arg needs KEY=VALUE, got '$kv'" ;; esac
done

version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)"
[ -n "$version" ] || die "cannot read the version from pyproject.toml"
[ -n "$tag" ] || tag="dynamo:${version}-${framework}"
dockerfile="$ROOT/container/Dockerfile.$framework"
[ -f "$dockerfile" ] || die "missing $dockerfile"

cmd=(docker buildx build --platform "$platform" -f "$dockerfile" --target "$target" -t "$tag"
     --build-arg "DYNAMO_VERSION=$version")
if [ "$experimental" = 1 ]; then cmd+=(--build-arg "TRTLLM_PRE=1"); fi
for kv in "${build_args[@]+"${build_args[@]}"}"; do cmd+=(--build-arg "$kv"); done
if [ "$no_cache" = 1 ]; then cmd+=(--no-cache); fi
if [ "$push" = 1 ]; then cmd+=(--push); else cmd+=(--load); fi
cmd+=("$ROOT")

if [ "$dry_run" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
command -v docker >/dev/null 2>&1 || { echo "build.sh: docker not found; install Docker with buildx (or pass --dry-run)" >&2; exit 1; }
echo "building $tag ($framework, $platform)" >&2
exec "${cmd[@]}"
