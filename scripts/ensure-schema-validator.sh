#!/usr/bin/env bash
# Installs kubernetes-validate (PyPI; it bundles the Kubernetes API's JSON
# schemas) into a virtualenv under target/, for the deploy manifests test.
# Prints the validator's path. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/schema-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "palisade: python3-venv is missing; run as root or install it" >&2
      exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  mkdir -p target
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q "kubernetes-validate==1.37.0" >&2
fi
echo "$PWD/$venv/bin/kubernetes-validate"
