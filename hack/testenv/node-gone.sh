#!/usr/bin/env bash
# Fails, saying what, if anything of a test node outlived down.sh: a process of its binaries,
# a mount under the plane's directory, a network namespace or veth of the pod network, a
# kubepods cgroup, the pod network's address on lo.
set -u
dir=${FLUXMEDIC_TESTENV_DIR:-/tmp/fluxmedic-testenv}
left=()
for p in kubelet kube-scheduler containerd containerd-shim-runc-v2 runc pause; do
  pids=$(pgrep -x "$p" 2>/dev/null | tr '\n' ' ')
  [ -n "$pids" ] && left+=("process $p ($pids)")
done
# The chart's pod: a fluxmedic process whose cgroup is under kubepods.
for pid in $(pgrep -x fluxmedic 2>/dev/null); do
  grep -q kubepods "/proc/$pid/cgroup" 2>/dev/null && left+=("pod process fluxmedic ($pid)")
done
m=$(awk -v p="$dir/" 'index($2, p) == 1 {print $2}' /proc/self/mounts)
[ -n "$m" ] && left+=("mounts: $m")
# Network namespaces: any process or bind mount holding one other than the host's.
host_ns=$(readlink /proc/self/ns/net)
ns=$(for p in /proc/[0-9]*; do readlink "$p/ns/net" 2>/dev/null; done | sort -u | grep -Fvx "$host_ns")
[ -n "$ns" ] && left+=("network namespaces in use: $ns")
grep -q nsfs /proc/self/mounts && left+=("nsfs mounts: $(awk '$3 == "nsfs" {print $2}' /proc/self/mounts)")
v=$(ip -o addr show to 10.213.0.0/16 2>/dev/null)
[ -n "$v" ] && left+=("pod-network addresses: $v")
for cg in /sys/fs/cgroup/*/kubepods; do [ -d "$cg" ] && left+=("cgroup $cg"); done
if [ ${#left[@]} -gt 0 ]; then
  echo "the test node left things behind:" >&2
  printf '  %s\n' "${left[@]}" >&2
  exit 1
fi
echo "[testenv] nothing of the node is left" >&2
