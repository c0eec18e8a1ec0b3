#!/usr/bin/env bash
# Tears the test node down completely (called by down.sh, safe to run twice): kubelet first, so
# nothing is restarted; then every pod sandbox through the CRI (their containers, network
# namespaces and pod-network addresses go with them); containerd and any shim left; whatever
# is still mounted under the node's directory; the kubepods cgroups; the address on lo.
# hack/testenv/node-gone.sh checks that nothing is left.
set -u
dir=${FLUXMEDIC_TESTENV_DIR:-/tmp/fluxmedic-testenv}
n=$dir/n
[ -d "$n" ] || exit 0
bin=$(cat "$n/bin" 2>/dev/null)

# shellcheck source=stop.sh
source "$(dirname "$0")/stop.sh"

t0=$(date +%s%N)
step() { echo "[testenv down] node: $1 ($(( ($(date +%s%N) - t0) / 1000000 )) ms)" >&2; }
stop_pid kubelet 100
step "kubelet stopped"
stop_pid kube-scheduler 100
sock=$n/containerd.sock
if [ -S "$sock" ] && [ -x "$bin/crictl" ]; then
  crictl=("$bin/crictl" --runtime-endpoint "unix://$sock" --timeout 20s)
  for p in $("${crictl[@]}" pods -q 2>/dev/null); do
    "${crictl[@]}" stopp "$p" >/dev/null 2>&1
    "${crictl[@]}" rmp -f "$p" >/dev/null 2>&1
  done
fi
step "pods removed"
stop_pid containerd 100
step "containerd stopped"
# A shim outlives containerd by design; these are this node's (their address is its socket).
for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
# Container processes whose shim died with them are reparented; kill what still runs in kubepods.
for cg in /sys/fs/cgroup/*/kubepods; do
  [ -d "$cg" ] || continue
  find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null
done
sleep 0.2
# Mounts: volumes (kubelet), rootfs (overlay), network namespaces (nsfs), deepest first.
for _ in 1 2 3; do
  mounts=$(awk -v p="$n/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r)
  [ -z "$mounts" ] && break
  for m in $mounts; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
done
# The kubepods cgroups kubelet made under each v1 hierarchy, leaves first.
for cg in /sys/fs/cgroup/*/kubepods; do
  [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
done
ip addr del 10.213.0.1/32 dev lo 2>/dev/null
[ -f "$n/ip_forward.before" ] && cat "$n/ip_forward.before" > /proc/sys/net/ipv4/ip_forward
# libcni's result cache for this network (the rest of the node's state is under $n).
rm -f /var/lib/cni/results/fluxmedic-node-* 2>/dev/null
rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null
rm -rf "$n"
step "cleaned up"
exit 0
