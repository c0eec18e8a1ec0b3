#!/usr/bin/env bash
# The test command (README, .ci/run): on a fresh machine it installs what is missing, builds
# the test control planes from pinned Go modules (cached outside the checkout), fuzzes every
# untrusted input for a bounded time, starts a control plane with Flux 2.9 on loopback and
# runs every test (unit, property, CRD drift, CLI, chart, demo, end-to-end, faults,
# reliability, trust boundaries), then the runbook's end-to-end tests again on Flux 2.7, and
# stops the control planes.
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

log "building the test control planes: Flux 2.9 and 2.7 (cached under ${XDG_CACHE_HOME:-$HOME/.cache}/fluxmedic/testenv)"
bash hack/testenv/build.sh --flux 2.9 >/dev/null
bash hack/testenv/build.sh --flux 2.7 >/dev/null
log "building fluxmedic and its tests"
cargo build --locked --all-targets
# A bounded coverage-guided fuzzing run of every untrusted input (nightly + cargo-fuzz,
# installed if missing; build cached outside the checkout). Before the control plane starts,
# so it never competes with the end-to-end tests for the two cores.
bash hack/fuzz.sh "${FLUXMEDIC_FUZZ_SECONDS:-15}"

dir=${FLUXMEDIC_TESTENV_DIR:-/tmp/fluxmedic-testenv-ci}
base=${FLUXMEDIC_TESTENV_PORT_BASE:-19400}
threads=${FLUXMEDIC_TEST_THREADS:-6}
trap 'FLUXMEDIC_TESTENV_DIR=$dir bash hack/testenv/down.sh; FLUXMEDIC_TESTENV_DIR=$dir-2.7 bash hack/testenv/down.sh' EXIT

# Everything on Flux 2.9 (the default).
export FLUXMEDIC_TESTENV_DIR=$dir FLUXMEDIC_TESTENV_PORT_BASE=$base FLUXMEDIC_FLUX=2.9
bash hack/testenv/up.sh >/dev/null
log "running every test on Flux 2.9"
# End-to-end tests mostly wait on Flux; more threads than cores keeps the wall time down.
status=0
cargo test --locked --no-fail-fast -- --test-threads="$threads" || status=$?
bash hack/testenv/down.sh

# The runbook's end-to-end tests again on Flux 2.7, on a control plane of its own.
export FLUXMEDIC_TESTENV_DIR=$dir-2.7 FLUXMEDIC_TESTENV_PORT_BASE=$((base + 100)) FLUXMEDIC_FLUX=2.7
bash hack/testenv/up.sh >/dev/null
log "running the end-to-end tests on Flux 2.7"
cargo test --locked --no-fail-fast --test e2e -- --test-threads="$threads" || status=$?
exit "$status"
