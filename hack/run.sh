#!/usr/bin/env bash
# Set up and run.
#
#   bash hack/run.sh
#       The demo: builds the test control plane (cached under ~/.cache/fluxmedic), starts it
#       on loopback, sets up a small Flux estate (Git repositories, a dependsOn chain, Helm
#       releases, a credentials Secret), runs fluxmedic as the chart would, breaks five things
#       the way the runbook describes and fixes their causes, with a live view of the
#       Remediations; then a summary, and it stays up for exploring until Ctrl-C, which stops
#       everything it started.
#
#   bash hack/run.sh --cluster [--mode Observe|RequireApproval|Auto]
#       fluxmedic against your own cluster (the current kubeconfig), in Observe mode unless
#       told otherwise: installs its CRDs and one cluster-wide RemediationPolicy in flux-system,
#       then runs the operator in the foreground. Observe records and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[run $(date +%H:%M:%S)] $*" >&2; }

mode=demo
policy_mode=Observe
while [ $# -gt 0 ]; do
  case $1 in
    --cluster) mode=cluster ;;
    --mode) policy_mode=${2:?--mode needs Observe, RequireApproval or Auto}; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case $policy_mode in Observe|RequireApproval|Auto) ;; *) echo "--mode must be Observe, RequireApproval or Auto" >&2; exit 2 ;; esac

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

if [ "$mode" = cluster ]; then
  command -v kubectl >/dev/null || { echo "kubectl is required for --cluster" >&2; exit 1; }
  log "building fluxmedic"
  cargo build --locked >&2
  bin=./target/debug/fluxmedic
  log "cluster: $(kubectl config current-context); installing the CRDs and policy flux-system/fluxmedic ($policy_mode)"
  "$bin" crds | kubectl apply --server-side -f - >/dev/null
  kubectl get namespace flux-system >/dev/null 2>&1 || kubectl create namespace flux-system >/dev/null
  rules=""
  for c in failed-release invalid-manifests git-auth git-unreachable dependency-cascade stale-lock; do
    rules="$rules    - {case: $c, mode: $policy_mode}"$'\n'
  done
  kubectl apply --server-side -f - >/dev/null <<EOF
apiVersion: fluxmedic.io/v1alpha1
kind: RemediationPolicy
metadata: {name: fluxmedic, namespace: flux-system}
spec:
  priority: -100
  targets: {namespaces: ["*"]}
  rules:
$rules
EOF
  log "running; kubectl get remediations -A shows what it sees; metrics on http://127.0.0.1:9797/metrics"
  log "to remove: kubectl delete remediationpolicy -n flux-system fluxmedic; kubectl delete crd remediations.fluxmedic.io remediationpolicies.fluxmedic.io"
  exec "$bin" run --namespace flux-system --metrics-addr 127.0.0.1:9797
fi

command -v go >/dev/null || { echo "go (>= 1.26) is required to build the local control plane" >&2; exit 1; }
export FLUXMEDIC_TESTENV_DIR=${FLUXMEDIC_TESTENV_DIR:-/tmp/fluxmedic-testenv}
log "building the local control plane (cached; the first time takes 15-20 minutes)"
bash hack/testenv/build.sh >/dev/null
if ! up_log=$(bash hack/testenv/up.sh 2>&1 >/dev/null </dev/null); then
  echo "$up_log" >&2
  echo "the control plane did not start; see $FLUXMEDIC_TESTENV_DIR/logs" >&2
  exit 1
fi
# Stop the control plane on the way out only if this run started it.
started_here=true
grep -q "already up" <<<"$up_log" && started_here=false
cleanup() {
  if $started_here; then
    log "stopping the control plane"
    bash hack/testenv/down.sh >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
log "building fluxmedic and the demo"
cargo test --locked --test demo --no-run >&2
cargo test --locked --test demo -q -- --interactive
