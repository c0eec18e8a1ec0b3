# Sourced by up.sh with --node, after the API server and controller-manager are up: a real node.
# containerd (+ runc, a ptp pod network), kube-scheduler and a kubelet named 127.0.0.1.
# Everything it keeps lives under $dir/n (short: the shims' sockets are unix paths); node-down.sh
# removes every pod sandbox, mount, network namespace and kubepods cgroup it made.
# Uses from up.sh: dir bin pki api_ip P_API P_KUBELET P_KUBELET_H P_SCHED pod_subnet pod_gw,
# KUBECONFIG, kubeconfig, start, wait_for, log.

n=$dir/n
mkdir -p "$n"/{cni,ipam,kubelet,pod-logs,images}
echo "$bin" > "$n/bin"   # for node-down.sh, even when up.sh stops half-way
# The ptp plugin turns IPv4 forwarding on for the host; node-down.sh puts the old value back.
cat /proc/sys/net/ipv4/ip_forward > "$n/ip_forward.before"
cat > "$n/cni/10-fluxmedic.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "fluxmedic-node", "plugins": [
  {"type": "ptp", "ipMasq": false, "mtu": 1500,
   "ipam": {"type": "host-local", "dataDir": "$n/ipam", "routes": [{"dst": "0.0.0.0/0"}],
            "ranges": [[{"subnet": "$pod_subnet", "gateway": "$pod_gw"}]]}}]}
EOF

pause_image=fluxmedic.local/pause:$KUBERNETES_VERSION
cat > "$n/containerd.toml" <<EOF
version = 3
root = "$n/containerd"
state = "$n/run"
imports = []
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = "$n/containerd.sock"
[ttrpc]
  address = "$n/containerd.sock.ttrpc"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$pause_image"
[plugins.'io.containerd.cri.v1.runtime']
  # Processes here may not lower their OOM score: without this every sandbox fails.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$bin"]
    conf_dir = "$n/cni"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "$bin/runc"
      Root = "$n/runc"
      SystemdCgroup = false
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
[plugins.'io.containerd.shim.v1.manager']
  socket_dir = "$n/s"
EOF
start containerd env PATH="$bin:$PATH" "$bin/containerd" --config "$n/containerd.toml"
ctr=("$bin/ctr" --address "$n/containerd.sock" -n k8s.io)
wait_for containerd 30 "${ctr[@]}" version
# The sandbox image, from the pause binary built from the Kubernetes module: nothing is pulled.
"$bin/image-tool" -out "$n/images/pause.tar" -tag "$pause_image" -user 65535:65535 \
  -entrypoint '["/pause"]' -file "$bin/pause=/pause:0755"
"${ctr[@]}" images import "$n/images/pause.tar" >/dev/null

cat > "$n/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: "$KUBECONFIG"}
leaderElection: {leaderElect: false}
EOF
start kube-scheduler "$bin/kube-scheduler" --config="$n/scheduler.yaml" \
  --authentication-kubeconfig="$KUBECONFIG" --authorization-kubeconfig="$KUBECONFIG" \
  --bind-address=127.0.0.1 --secure-port="$P_SCHED"

kubeconfig "$n/kubelet.kubeconfig" node
# cgroup v1 with cgroupfs here (PID 1 is not systemd); kubelet 1.35+ refuses v1 unless told.
# Eviction and image garbage collection are loosened: the tests' images are imported, never
# pulled, and must not be collected on a busy disk.
cat > "$n/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $P_KUBELET
healthzBindAddress: 127.0.0.1
healthzPort: $P_KUBELET_H
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$n/containerd.sock
enforceNodeAllocatable: []
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: "$n/pod-logs"
serializeImagePulls: false
EOF
start kubelet "$bin/kubelet" --config="$n/kubelet.yaml" --kubeconfig="$n/kubelet.kubeconfig" \
  --hostname-override=127.0.0.1 --root-dir="$n/kubelet" --cert-dir="$n/kubelet/pki" --v=1
wait_for kubelet 90 kubectl wait --for=condition=Ready node/127.0.0.1 --timeout=2s
log "node 127.0.0.1 Ready (pods reach the API server at https://$api_ip:$P_API)"
