#!/usr/bin/env bash
# The test command (README, .ci/run): on a fresh machine it installs what is missing, builds
# the test control planes from pinned Go modules (cached outside the checkout), fuzzes every
# untrusted input for a bounded time, starts a control plane with Flux 2.9 on loopback and
# runs every test (unit, property, CRD drift, CLI, chart, demo, end-to-end, faults,
# reliability, trust boundaries), then the runbook's end-to-end tests again on Flux 2.7, then
# the chart as users run it (the image built here, as pods on a real node), and stops the
# control planes, checking that nothing of the node is left.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[test $(date +%H:%M:%S)] $*" >&2; }

need_apt=()
for tool in git openssl curl python3 flock gcc pkg-config ip tar; do
  command -v "$tool" >/dev/null || need_apt+=("$tool")
done
[ -x /usr/lib/git-core/git-http-backend ] || need_apt+=(git)
# runc's seccomp support (the chart's pods ask for the RuntimeDefault profile).
pkg-config --exists libseccomp 2>/dev/null || need_apt+=(libseccomp-dev)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  pkgs=$(printf '%s\n' "${need_apt[@]}" | sed 's/^flock$/util-linux/; s/^ip$/iproute2/' | sort -u | tr '\n' ' ')
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo (Rust >= 1.89) is required" >&2; exit 1; }
command -v go >/dev/null || { echo "go (>= 1.26) is required to build the test control plane" >&2; exit 1; }

log "building the test control planes: Flux 2.9 and 2.7 (cached under ${XDG_CACHE_HOME:-$HOME/.cache}/fluxmedic/testenv)"
bash hack/testenv/build.sh --flux 2.9 --node >/dev/null
bash hack/testenv/build.sh --flux 2.7 >/dev/null
log "building fluxmedic and its tests"
cargo build --locked --all-targets
# A bounded coverage-guided fuzzing run of every untrusted input (nightly + cargo-fuzz,
# installed if missing; build cached outside the checkout). Before the control plane starts,
# so it never competes with the end-to-end tests for the two cores.
bash hack/fuzz.sh "${FLUXMEDIC_FUZZ_SECONDS:-15}"
# The image users run (the Dockerfile's final stage, built without a container engine), also
# before any control plane starts.
log "building the fluxmedic image"
image_tar=$(bash hack/image.sh | tail -n1)

dir=${FLUXMEDIC_TESTENV_DIR:-/tmp/fluxmedic-testenv-ci}
base=${FLUXMEDIC_TESTENV_PORT_BASE:-19400}
threads=${FLUXMEDIC_TEST_THREADS:-6}
trap 'for d in $dir $dir-2.7 $dir-node; do FLUXMEDIC_TESTENV_DIR=$d bash hack/testenv/down.sh; done' EXIT
# Every test's output is also kept here, so the end of the run can repeat why each failed
# test failed (a long backtrace would otherwise bury it far from the end of the output).
output=$(mktemp -t fluxmedic-test-output.XXXXXX)
tests() { cargo test --locked --no-fail-fast "$@" 2>&1 | tee -a "$output"; return "${PIPESTATUS[0]}"; }

# Everything on Flux 2.9 (the default).
export FLUXMEDIC_TESTENV_DIR=$dir FLUXMEDIC_TESTENV_PORT_BASE=$base FLUXMEDIC_FLUX=2.9
bash hack/testenv/up.sh >/dev/null
log "running every test on Flux 2.9"
# End-to-end tests mostly wait on Flux; more threads than cores keeps the wall time down.
status=0
tests -- --test-threads="$threads" || status=$?
bash hack/testenv/down.sh

# The runbook's end-to-end tests again on Flux 2.7, on a control plane of its own.
export FLUXMEDIC_TESTENV_DIR=$dir-2.7 FLUXMEDIC_TESTENV_PORT_BASE=$((base + 100)) FLUXMEDIC_FLUX=2.7
bash hack/testenv/up.sh >/dev/null
log "running the end-to-end tests on Flux 2.7"
tests --test e2e -- --test-threads="$threads" || status=$?
bash hack/testenv/down.sh

# The chart as users run it: the image as pods on a real node (kubelet, containerd, runc),
# on a control plane of its own; then nothing of the node may be left.
export FLUXMEDIC_TESTENV_DIR=$dir-node FLUXMEDIC_TESTENV_PORT_BASE=$((base + 200)) FLUXMEDIC_FLUX=2.9
export FLUXMEDIC_TESTENV_NODE=1 FLUXMEDIC_IMAGE_TAR=$image_tar
bash hack/testenv/up.sh >/dev/null
log "running the node tests (the chart's Deployment as pods)"
tests --test node -- --ignored --test-threads=2 || status=$?
bash hack/testenv/down.sh
bash hack/testenv/node-gone.sh || status=$?
if [ "$status" -ne 0 ]; then
  log "why the failed tests failed (every panic, from $output):"
  grep -A3 -E "^thread '.*' \(?[0-9]*\)? ?panicked at" "$output" | cut -c1-800 >&2 || true
fi
exit "$status"
