#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of the four inputs fluxmedic takes from
# others: Flux objects from the watches, `diagnose` dumps, Helm release storage, and
# Remediation records (whatever an approver or a tenant writes).
#
#   bash hack/fuzz.sh [SECONDS-PER-TARGET]     # default 15: the bounded run of the test command
#   task fuzz:long                              # 10 minutes per target
#
# The committed corpus (fuzz/corpus/<target>) seeds each run; what a run finds goes to a
# scratch corpus outside the checkout, and the build to a cache, so a run leaves the tree as
# it was and a second run starts warm. A crash fails the run; its input is in fuzz/artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
log() { echo "[fuzz $(date +%H:%M:%S)] $*" >&2; }
cache=${XDG_CACHE_HOME:-$HOME/.cache}/fluxmedic/fuzz

if ! cargo +nightly --version >/dev/null 2>&1; then
  log "installing a nightly toolchain (cargo fuzz needs one)"
  rustup toolchain install nightly --profile minimal >&2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install --locked cargo-fuzz >&2
fi
mkdir -p "$cache/target"
targets=(flux_object dump helm_release record)
log "building ${targets[*]} (cached in $cache/target)"
(cd fuzz && cargo +nightly fuzz build --sanitizer none --target-dir "$cache/target" >&2)
for t in "${targets[@]}"; do
  mkdir -p "$cache/corpus/$t"
  log "$t: ${secs}s"
  (cd fuzz && cargo +nightly fuzz run "$t" --sanitizer none --target-dir "$cache/target" \
      "$cache/corpus/$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
    | grep -E "^(stat::number_of_executed_units|Done|==|.*panicked|.*ERROR)" >&2)
done
log "no crash in ${#targets[@]} targets x ${secs}s"
