#!/usr/bin/env bash
# The main job: build palisade, run the example shop in the lab (nodes and
# pods as network namespaces, the nftables dataplane enforcing its
# policies), probe every pair with real packets and print the matrix next to
# the engine's prediction. Needs root; exits non-zero on any disagreement.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ensure-toolchain.sh
cargo build --release --quiet --bin palisade
echo "== palisade lab run -f examples/shop --port tcp/80 --port tcp/8000 --port tcp/8080 --port tcp/5432 --port tcp/6379 --port udp/53"
./target/release/palisade lab run -f examples/shop \
  --port tcp/80 --port tcp/8000 --port tcp/8080 --port tcp/5432 --port tcp/6379 --port udp/53
echo
echo "== palisade explain shop/api data/postgres tcp/5432 examples/shop"
./target/release/palisade explain shop/api data/postgres tcp/5432 examples/shop
