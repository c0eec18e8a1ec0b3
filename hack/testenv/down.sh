#!/usr/bin/env bash
# Stop what up.sh started, by the PIDs it recorded, newest first.
set -u
dir=${FLUXMEDIC_TESTENV_DIR:-/tmp/fluxmedic-testenv}
[ -d "$dir/pids" ] || exit 0
# The node first (kubelet, pods, containerd), while its state and PIDs are still there.
bash "$(dirname "$0")/node-down.sh"
# shellcheck source=stop.sh
source "$(dirname "$0")/stop.sh"
for name in bucket registry fixture-server notification-controller helm-controller kustomize-controller source-controller kube-controller-manager kube-apiserver etcd; do
  stop_pid "$name"
done
echo "[testenv down] stopped ($dir)" >&2
