#!/usr/bin/env bash
# Prepares what a test needs to drive containerd's CRI plugin (containerd 1.6
# from Debian 12, as kubelet drives it), all in a cache outside the checkout:
#
#   ${PALISADE_CACHE:-/var/cache/palisade}/real-runtime/cri        a tiny CRI client (Go, runtime.v1)
#   ${PALISADE_CACHE:-/var/cache/palisade}/real-runtime/pause.tar  an OCI image layout (busybox running
#                                                                   sleep), named palisade.invalid/pause:1
#
# and installs with apt-get (Debian's registry only): containerd, runc,
# busybox-static, containernetworking-plugins (loopback, portmap), iptables.
# The client is built in GOPATH mode inside the kubernetes v1.20.2 tree that
# scripts/real-apiserver/build.sh unpacks (its vendor/ has grpc and
# staging/src/k8s.io/cri-api), with that script's Go 1.19; if that cache is
# missing, it runs scripts/real-apiserver/build.sh first (about 3 min).
#
# Safe to run again: when everything is in place and current it exits at once.
# The last line on stdout is the cache folder (holding cri and pause.tar); all
# progress goes to stderr. Needs root on a fresh machine. See
# shared/REAL-RUNTIME.md for the facts behind each step.
set -euo pipefail

K8S_VERSION=v1.20.2
CACHE="${PALISADE_CACHE:-/var/cache/palisade}"
OUT="$CACHE/real-runtime"
API="$CACHE/kube-apiserver-$K8S_VERSION"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CRI_SRC="$HERE/cri/main.go"
CRI="$OUT/cri"
PAUSE="$OUT/pause.tar"
PAUSE_REF="palisade.invalid/pause:1"
# Bump when the image recipe below changes.
PAUSE_RECIPE=1

log() { echo "real-runtime build: $*" >&2; }
die() { echo "real-runtime build: ERROR: $*" >&2; exit 1; }

[ -f "$CRI_SRC" ] || die "no client source at $CRI_SRC"

sha() { sha256sum "$1" | cut -d' ' -f1; }
cri_stamp() { sha "$CRI_SRC"; }
pause_stamp() { echo "$PAUSE_RECIPE $(sha /bin/busybox)"; }

packages_ok() {
  local b
  for b in containerd ctr runc iptables nsenter unshare; do
    command -v "$b" >/dev/null 2>&1 || return 1
  done
  [ -x /bin/busybox ] && /bin/busybox true || return 1
  [ -x /usr/lib/cni/loopback ] && [ -x /usr/lib/cni/portmap ] &&
    [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ]
}

ready() {
  packages_ok &&
    [ -x "$CRI" ] && [ "$(cat "$OUT/cri.stamp" 2>/dev/null)" = "$(cri_stamp)" ] &&
    [ -s "$PAUSE" ] && [ "$(cat "$OUT/pause.stamp" 2>/dev/null)" = "$(pause_stamp 2>/dev/null)" ]
}

if ready; then
  echo "$OUT"
  exit 0
fi

mkdir -p "$OUT" || die "cannot create $OUT (set PALISADE_CACHE to a writable folder)"
exec 9>"$OUT/.lock"
if ! flock -w 1800 9; then die "another build holds $OUT/.lock for more than 30 min"; fi
if ready; then
  echo "$OUT"
  exit 0
fi
start_ts=$(date +%s)

# --- packages -----------------------------------------------------------------
if ! packages_ok; then
  [ "$(id -u)" -eq 0 ] || die "containerd, runc, busybox-static, containernetworking-plugins or iptables missing; run as root"
  pkgs=(containerd runc busybox-static containernetworking-plugins iptables util-linux)
  # No service may start: on a machine with systemd, Debian's containerd
  # package would start the system's own containerd otherwise.
  made_policy=0
  if ! [ -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2; }
  log "apt-get install ${pkgs[*]}"
  if ! apt_install; then
    log "apt-get update"
    apt-get update -qq >&2 || { [ "$made_policy" -eq 0 ] || rm -f /usr/sbin/policy-rc.d; die "apt-get update failed"; }
    apt_install || { [ "$made_policy" -eq 0 ] || rm -f /usr/sbin/policy-rc.d; die "apt-get install ${pkgs[*]} failed"; }
  fi
  [ "$made_policy" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
  packages_ok || die "packages installed but a binary is still missing"
fi
log "$(containerd --version), $(runc --version | head -n1)"

# --- the CRI client -------------------------------------------------------------
if ! [ -x "$CRI" ] || [ "$(cat "$OUT/cri.stamp" 2>/dev/null)" != "$(cri_stamp)" ]; then
  GOROOT="$API/root/usr/lib/go-1.19"
  SRC="$API/gopath/src/k8s.io/kubernetes"
  if ! [ -x "$GOROOT/bin/go" ] || ! [ -f "$SRC/.palisade-prepared" ] ||
    ! [ -d "$SRC/staging/src/k8s.io/cri-api/pkg/apis/runtime/v1" ]; then
    log "no Go toolchain or kubernetes tree in $API: running scripts/real-apiserver/build.sh"
    "$HERE/../real-apiserver/build.sh" >&2 || die "scripts/real-apiserver/build.sh failed"
  fi
  [ -x "$GOROOT/bin/go" ] || die "no Go at $GOROOT"
  [ -d "$SRC/vendor/google.golang.org/grpc" ] || die "no vendored grpc in $SRC"
  export GOROOT
  export PATH="$GOROOT/bin:$PATH"
  export GOPATH="$API/gopath"
  export GOCACHE="$API/gocache"
  export GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=
  # Inside the tree, so that its vendor/ resolves the imports.
  mkdir -p "$SRC/cmd/palisade-cri"
  cp "$CRI_SRC" "$SRC/cmd/palisade-cri/main.go"
  log "go build ./cmd/palisade-cri ($(go version | cut -d' ' -f3); about 40 s from a cold cache)"
  (cd "$SRC" && go build -trimpath -ldflags "-s -w" -o "$CRI.tmp" ./cmd/palisade-cri) ||
    die "go build ./cmd/palisade-cri failed"
  "$CRI.tmp" version --socket /nonexistent/palisade-cri-test.sock >/dev/null 2>&1 && die "the built client does not fail as it should"
  mv -f "$CRI.tmp" "$CRI"
  cri_stamp >"$OUT/cri.stamp"
fi

# --- the pause image --------------------------------------------------------------
# An OCI image layout with one uncompressed layer: /bin/busybox and two links.
# Its entrypoint sleeps (pid 1 of the sandbox; containerd kills it with SIGKILL).
if ! [ -s "$PAUSE" ] || [ "$(cat "$OUT/pause.stamp" 2>/dev/null)" != "$(pause_stamp)" ]; then
  case "$(dpkg --print-architecture)" in
    amd64) ARCH=amd64 ;;
    arm64) ARCH=arm64 ;;
    armhf) ARCH=arm ;;
    i386) ARCH=386 ;;
    ppc64el) ARCH=ppc64le ;;
    s390x) ARCH=s390x ;;
    *) die "unknown architecture $(dpkg --print-architecture)" ;;
  esac
  work="$OUT/pause-build"
  rm -rf "$work"
  mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp" "$work/layout/blobs/sha256"
  cp /bin/busybox "$work/rootfs/bin/busybox"
  ln -s busybox "$work/rootfs/bin/sh"
  ln -s busybox "$work/rootfs/bin/sleep"
  chmod 1777 "$work/rootfs/tmp"
  tar_det() { tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu "$@"; }
  tar_det -C "$work/rootfs" -cf "$work/layer.tar" .
  blob() { # file -> prints digest hex; stores the blob
    local h
    h=$(sha "$1")
    cp "$1" "$work/layout/blobs/sha256/$h"
    echo "$h"
  }
  size() { stat -c %s "$1"; }
  layer=$(blob "$work/layer.tar")
  layer_size=$(size "$work/layer.tar")
  printf '%s' '{"architecture":"'"$ARCH"'","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=/bin"],"Entrypoint":["/bin/sleep","2147483647"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:'"$layer"'"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"scripts/real-runtime/build.sh: /bin/busybox from busybox-static"}]}' >"$work/config.json"
  config=$(blob "$work/config.json")
  config_size=$(size "$work/config.json")
  printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config"'","size":'"$config_size"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:'"$layer"'","size":'"$layer_size"'}]}' >"$work/manifest.json"
  manifest=$(blob "$work/manifest.json")
  manifest_size=$(size "$work/manifest.json")
  printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"
  printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest"'","size":'"$manifest_size"',"platform":{"architecture":"'"$ARCH"'","os":"linux"},"annotations":{"io.containerd.image.name":"'"$PAUSE_REF"'","org.opencontainers.image.ref.name":"1"}}]}' >"$work/layout/index.json"
  tar_det -C "$work/layout" -cf "$PAUSE.tmp" oci-layout index.json blobs
  mv -f "$PAUSE.tmp" "$PAUSE"
  rm -rf "$work"
  pause_stamp >"$OUT/pause.stamp"
  log "pause image $PAUSE_REF: $PAUSE ($(size "$PAUSE") bytes)"
fi

ready || die "build finished but the result is not complete"
log "ready in $(($(date +%s) - start_ts)) s: $CRI, $PAUSE"
echo "$OUT"
