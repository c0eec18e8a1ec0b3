#!/usr/bin/env bash
# Set up and run: build the test control plane (cached), start it on loopback, install
# fluxmedic's CRDs and an example policy, and run the operator against it in the foreground.
# Ctrl-C stops the operator and the control plane. Point kubectl at it with
#   source "${FLUXMEDIC_TESTENV_DIR:-/tmp/fluxmedic-testenv}/env.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in git openssl curl python3 flock; do
  command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git openssl curl python3 util-linux >/dev/null; break; }
done
cargo build --locked --release
env_file=$(bash hack/testenv/up.sh | tail -n1)
# shellcheck disable=SC1090
source "$env_file"
trap 'bash hack/testenv/down.sh' EXIT
./target/release/fluxmedic crds | kubectl apply --server-side -f - >/dev/null
kubectl apply --server-side -f examples/policy.yaml >/dev/null
echo "control plane up: source $env_file   (kubectl get remediations -A; fluxmedic diagnose)" >&2
./target/release/fluxmedic run --namespace flux-system --metrics-addr 127.0.0.1:9797 --helm "$FLUXMEDIC_HELM"
