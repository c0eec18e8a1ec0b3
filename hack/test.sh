#!/usr/bin/env bash
# The test command (README, .ci/run): on a fresh machine it installs what is missing, builds
# the test control plane from pinned Go modules (cached outside the checkout), starts it on
# loopback, runs every test (unit, CRD drift, CLI, chart, smoke and end-to-end against real
# Flux controllers), and stops the control plane again.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[test $(date +%H:%M:%S)] $*" >&2; }

need_apt=()
for tool in git openssl curl python3 flock; do
  command -v "$tool" >/dev/null || need_apt+=("$tool")
done
[ -x /usr/lib/git-core/git-http-backend ] || need_apt+=(git)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  pkgs=$(printf '%s\n' "${need_apt[@]}" | sed 's/^flock$/util-linux/' | sort -u | tr '\n' ' ')
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo (Rust >= 1.89) is required" >&2; exit 1; }
command -v go >/dev/null || { echo "go (>= 1.26) is required to build the test control plane" >&2; exit 1; }

log "building the test control plane (cached under ${XDG_CACHE_HOME:-$HOME/.cache}/fluxmedic/testenv)"
bash hack/testenv/build.sh >/dev/null
log "building fluxmedic and its tests"
cargo build --locked --all-targets
# A bounded coverage-guided fuzzing run of every untrusted input (nightly + cargo-fuzz,
# installed if missing; build cached outside the checkout). Before the control plane starts,
# so it never competes with the end-to-end tests for the two cores.
bash hack/fuzz.sh "${FLUXMEDIC_FUZZ_SECONDS:-15}"

export FLUXMEDIC_TESTENV_DIR=${FLUXMEDIC_TESTENV_DIR:-/tmp/fluxmedic-testenv-ci}
export FLUXMEDIC_TESTENV_PORT_BASE=${FLUXMEDIC_TESTENV_PORT_BASE:-19400}
trap 'bash hack/testenv/down.sh' EXIT
bash hack/testenv/up.sh >/dev/null
log "running the tests"
# End-to-end tests mostly wait on Flux; more threads than cores keeps the wall time down.
cargo test --locked --no-fail-fast -- --test-threads="${FLUXMEDIC_TEST_THREADS:-6}"
