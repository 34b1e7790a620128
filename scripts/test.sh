#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/integration/conformance/
# property/golden tests, and a benchmark smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ensure-toolchain.sh
# The deploy manifests are validated against the Kubernetes API schemas.
PALISADE_KUBERNETES_VALIDATE="$(scripts/ensure-schema-validator.sh)"
export PALISADE_KUBERNETES_VALIDATE
# A real kube-apiserver and etcd for the agent's tests, built once from
# Debian's registry and cached outside the checkout (about 4 minutes cold).
echo "== kube-apiserver for real_apiserver.rs (cached in ${PALISADE_CACHE:-/var/cache/palisade})"
bash scripts/real-apiserver/build.sh >/dev/null
# containerd's CRI plugin, a busybox pause image and a small CRI client
# (built against the same tree) for real_runtime.rs.
echo "== containerd harness for real_runtime.rs"
bash scripts/real-runtime/build.sh >/dev/null
start=$(date +%s)
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --quiet 2>&1 | tee /tmp/palisade-test.$$.log
echo "== benchmark smoke run (each benchmark once)"
cargo bench --quiet -p palisade --bench engine -- --test
echo "== all tests passed in $(( $(date +%s) - start ))s"
