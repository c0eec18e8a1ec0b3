#!/usr/bin/env bash
# Kill the test control plane's kube-apiserver (SIGKILL: a crash, not a drain), keep it down for
# DOWN seconds (default 5), start it again with the same flags and wait until it is ready.
# Everything else (etcd, Flux, clients) stays up and must reconnect by itself.
#
#   hack/testenv/restart-apiserver.sh [DOWN]
set -euo pipefail
dir=${FLUXMEDIC_TESTENV_DIR:-/tmp/fluxmedic-testenv}
down=${1:-5}
pidf=$dir/pids/kube-apiserver
[ -f "$dir/kube-apiserver.cmd" ] || { echo "no $dir/kube-apiserver.cmd: start with up.sh" >&2; exit 1; }
pid=$(cat "$pidf")
kill -9 "$pid" 2>/dev/null || true
while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
sleep "$down"
eval "set -- $(cat "$dir/kube-apiserver.cmd")"
"$@" >>"$dir/logs/kube-apiserver.log" 2>&1 &
echo $! > "$pidf"
export KUBECONFIG=$dir/kubeconfig
for _ in $(seq 1 300); do
  kubectl get --raw /readyz >/dev/null 2>&1 && exit 0
  sleep 0.3
done
echo "kube-apiserver did not become ready again" >&2
exit 1
