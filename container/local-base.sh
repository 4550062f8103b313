#!/usr/bin/env bash
# Make a local Debian base image with Python 3 for machines that cannot pull base images from a
# registry (only the Debian mirror is reachable): debootstrap a minimal root filesystem, then import
# it into buildah's local storage. Prints the image name (last line of stdout); build.sh uses it.
#
#   container/local-base.sh [--tag NAME] [--suite bookworm] [--mirror URL] [--rebuild]
#
# The image stands in for python:3.11-slim-bookworm (Debian's python3 3.11 + venv, ca-certificates,
# netbase; docs and man pages excluded like debian:*-slim). Cached twice, so repeated runs are quick:
# the root filesystem as a tarball under ${DYNAMO_CONTAINER_CACHE:-~/.cache/dynamo-container}
# (debootstrap runs only when it is missing, ~2 min), and the image itself (reused when present).
# --rebuild ignores both. Needs root, debootstrap and buildah (apt-get install debootstrap buildah).
set -euo pipefail

BASE_REVISION=1  # bump when the package list or the image configuration below changes
PACKAGES="python3,python3-venv,ca-certificates,netbase"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "local-base.sh: $*" >&2; exit 2; }
log() { echo "local-base.sh: $*" >&2; }

suite="bookworm" mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}" tag="" rebuild=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; tag="$2"; shift 2 ;;
    --suite) [ $# -ge 2 ] || die "--suite needs a value"; suite="$2"; shift 2 ;;
    --mirror) [ $# -ge 2 ] || die "--mirror needs a value"; mirror="$2"; shift 2 ;;
    --rebuild) rebuild=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[ -n "$tag" ] || tag="localhost/dynamo-base:${suite}-python3"

[ "$(id -u)" = 0 ] || { echo "local-base.sh: needs root (debootstrap and buildah's chroot isolation)" >&2; exit 1; }
for tool in debootstrap buildah tar; do
  command -v "$tool" >/dev/null 2>&1 || { echo "local-base.sh: $tool not found (apt-get install debootstrap buildah)" >&2; exit 1; }
done

arch="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
cache="${DYNAMO_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dynamo-container}"
mkdir -p "$cache"
rootfs_tar="$cache/rootfs-${suite}-${arch}-r${BASE_REVISION}.tar"

# One builder at a time per cache (parallel CI steps share it).
exec 9>"$cache/.local-base.lock"
flock 9

if [ "$rebuild" = 0 ] && buildah inspect --type image "$tag" >/dev/null 2>&1 \
   && [ "$(buildah inspect --type image --format '{{index .ImageAnnotations "org.dynamo.base.revision"}}' "$tag" 2>/dev/null)" = "$BASE_REVISION" ]; then
  log "$tag already present"
  echo "$tag"
  exit 0
fi

work=""
ctr=""
cleanup() {
  if [ -n "$ctr" ]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi
  if [ -n "$work" ]; then rm -rf --one-file-system "$work"; fi
}
trap cleanup EXIT

if [ "$rebuild" = 1 ] || [ ! -s "$rootfs_tar" ]; then
  work="$(mktemp -d "$cache/rootfs.XXXXXX")"
  root="$work/root"
  start=$(date +%s)
  log "debootstrap $suite ($arch) from $mirror into $root (about 2 minutes)"
  debootstrap --variant=minbase --arch="$arch" --include="$PACKAGES" "$suite" "$root" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  # The full suite (updates, security) for the images' own apt-get; slim like debian:*-slim.
  security="${mirror%/debian}/debian-security"
  cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
  # Security updates now, so every image starts from a patched base.
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive sh -c \
    'apt-get update -qq && apt-get upgrade -y -qq && apt-get clean' >>"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; die "apt-get upgrade in the new root failed (log above)"; }
  : >"$root/etc/resolv.conf"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* "$root"/tmp/* \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
  tar --numeric-owner --xattrs -C "$root" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
      -cf "$rootfs_tar.tmp" .
  mv "$rootfs_tar.tmp" "$rootfs_tar"
  log "root filesystem cached as $rootfs_tar ($(du -h "$rootfs_tar" | cut -f1), $(( $(date +%s) - start ))s)"
  rm -rf --one-file-system "$work"
  work=""
else
  log "reusing the cached root filesystem $rootfs_tar"
fi

ctr="$(buildah from scratch)"
mnt="$(buildah mount "$ctr")"
tar --numeric-owner --xattrs -xpf "$rootfs_tar" -C "$mnt"
buildah umount "$ctr" >/dev/null
buildah config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
  --cmd '["python3"]' --os linux --arch "$arch" \
  --annotation "org.dynamo.base.revision=$BASE_REVISION" \
  --label "org.opencontainers.image.title=dynamo-base" \
  --label "org.opencontainers.image.description=debootstrap $suite minbase + $PACKAGES" "$ctr"
buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
ctr=""
log "imported as $tag"
echo "$tag"
