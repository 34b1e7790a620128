#!/usr/bin/env bash
# Makes sure this machine can build Palisade: a Rust toolchain (cargo) and
# the system tools the tests use. Safe to run again; installs only what is missing.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# The dataplane and the lab: nftables, conntrack, iproute2 (ip netns, veth).
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v conntrack >/dev/null 2>&1 || need_apt+=(conntrack)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# The CNI plugin is tested chained before Debian's standard plugins.
[ -x /usr/lib/cni/portmap ] || need_apt+=(containernetworking-plugins)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "palisade: missing ${need_apt[*]}; run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "palisade: no Rust toolchain found (cargo). Install Rust 1.89 or newer (rustup) and run again." >&2
  exit 1
fi
