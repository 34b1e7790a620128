#!/usr/bin/env bash
# The main job: build palisade and show what the example shop's policies allow.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ensure-toolchain.sh
cargo build --release --quiet --bin palisade
echo "== palisade analyze examples/shop"
./target/release/palisade analyze examples/shop
echo
echo "== palisade analyze examples/shop --port tcp/8080 --port tcp/5432 --from 'shop/*'"
./target/release/palisade analyze examples/shop --port tcp/8080 --port tcp/5432 --from 'shop/*'
echo
echo "== palisade explain shop/web data/redis tcp/6379 examples/shop"
./target/release/palisade explain shop/web data/redis tcp/6379 examples/shop
echo
echo "== palisade diff examples/shop examples/shop-v2"
./target/release/palisade diff examples/shop examples/shop-v2
