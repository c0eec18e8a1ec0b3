#!/usr/bin/env bash
# Stop what up.sh started, by the PIDs it recorded, newest first.
set -u
dir=${FLUXMEDIC_TESTENV_DIR:-/tmp/fluxmedic-testenv}
[ -d "$dir/pids" ] || exit 0
# The node first (kubelet, pods, containerd), while its state and PIDs are still there.
bash "$(dirname "$0")/node-down.sh"
for name in fixture-server notification-controller helm-controller kustomize-controller source-controller kube-controller-manager kube-apiserver etcd; do
  f=$dir/pids/$name
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
done
echo "[testenv down] stopped ($dir)" >&2
