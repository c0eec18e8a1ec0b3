#!/usr/bin/env bash
# Start the test control plane on loopback: etcd, kube-apiserver (RBAC), kube-controller-manager,
# Flux's source-, kustomize-, helm- and (when the release has one) notification-controller,
# the Git/chart fixture server, an OCI registry (hack/registry) and an S3 bucket server
# (hack/bucket).
# Idempotent: if it is already up and healthy, it only prints the env file.
#
#   hack/testenv/up.sh            # builds (cached) then starts; Flux $FLUXMEDIC_FLUX or 2.9
#   hack/testenv/up.sh --node     # also a real node (or FLUXMEDIC_TESTENV_NODE=1): kube-scheduler,
#                                 # kubelet, containerd + runc, a ptp pod network; the API server
#                                 # then listens on the node-side address of that network
#   source "$FLUXMEDIC_TESTENV_DIR/env.sh"   # KUBECONFIG etc. for kubectl and fluxmedic
#   hack/testenv/down.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
dir=${FLUXMEDIC_TESTENV_DIR:-/tmp/fluxmedic-testenv}
base=${FLUXMEDIC_TESTENV_PORT_BASE:-18400}
node=${FLUXMEDIC_TESTENV_NODE:-0}
[ "${1:-}" = --node ] && node=1
log() { echo "[testenv up $(date +%H:%M:%S)] $*" >&2; }

node_flag=(); [ "$node" = 1 ] && node_flag=(--node)
bin=$("$here/build.sh" "${node_flag[@]}" | tail -n1)
flux=$(cat "$(dirname "$bin")/flux-release")
# One starter at a time (test binaries and shells may race to start it).
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
crds=$(dirname "$bin")/crds

P_ETCD=$((base + 1)) P_PEER=$((base + 2)) P_API=$((base + 43)) P_KCM=$((base + 57))
P_STORAGE=$((base + 90)) P_FIXTURE=$((base + 80)) P_REGISTRY=$((base + 81)) P_BUCKET=$((base + 82))
P_SC_M=$((base + 61)) P_SC_H=$((base + 71)) P_KC_M=$((base + 62)) P_KC_H=$((base + 72)) P_HC_M=$((base + 63)) P_HC_H=$((base + 73))
P_NC_M=$((base + 64)) P_NC_H=$((base + 74)) P_NC_E=$((base + 84)) P_NC_R=$((base + 85))
P_KUBELET=$((base + 50)) P_KUBELET_H=$((base + 51)) P_SCHED=$((base + 52))
# The API server's address: loopback, or with a node the host side of the pod network (an
# address on lo, reachable from pods over their default route; nothing else listens there).
api_ip=127.0.0.1 node_ip=10.213.0.1 pod_subnet=10.213.1.0/24 pod_gw=10.213.1.1
[ "$node" = 1 ] && api_ip=$node_ip

export PATH=$bin:$PATH
healthy() { [ -f "$dir/env.sh" ] && grep -q "^export FLUXMEDIC_FLUX=$flux\$" "$dir/env.sh" && grep -q "^export FLUXMEDIC_NODE=$node\$" "$dir/env.sh" && curl -sf --max-time 2 -k "https://$api_ip:$P_API/readyz" -H "Authorization: Bearer $(cat "$dir/token" 2>/dev/null)" >/dev/null 2>&1 && curl -sf --max-time 2 "http://127.0.0.1:$P_FIXTURE/healthz" >/dev/null 2>&1 && [ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_REGISTRY/v2/")" = 401 ] && curl -sf --max-time 2 "http://127.0.0.1:$P_BUCKET/" >/dev/null 2>&1; }
if healthy; then
  log "already up ($dir)"
  echo "$dir/env.sh"
  exit 0
fi
"$here/down.sh" >/dev/null 2>&1 || true
rm -rf "$dir"; mkdir -p "$dir"/{pki,logs,pids,etcd,artifacts,fixture}
t0=$SECONDS

# --- PKI: a CA, a serving cert for 127.0.0.1/localhost, an admin client cert, SA keys ---
pki=$dir/pki
(
  cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=fluxmedic-testenv-ca" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
  printf "subjectAltName=IP:127.0.0.1,IP:$node_ip,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth" > san.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 -extfile san.ext 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=admin" 2>/dev/null
  printf "extendedKeyUsage=clientAuth" > client.ext
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 3650 -extfile client.ext 2>/dev/null
  # The kubelet's identity (the Node authorizer knows it by this name and group).
  openssl req -newkey rsa:2048 -nodes -keyout node.key -out node.csr -subj "/O=system:nodes/CN=system:node:127.0.0.1" 2>/dev/null
  openssl x509 -req -in node.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out node.crt -days 3650 -extfile client.ext 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$token" > "$dir/token"
echo "$token,admin,admin,system:masters" > "$pki/tokens.csv"
# A second admin identity for measurements: the audit log records only its requests.
bench_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$bench_token" > "$dir/bench-token"
echo "$bench_token,fluxmedic-bench,fluxmedic-bench,system:masters" >> "$pki/tokens.csv"
cat > "$dir/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["fluxmedic-bench"]
# helm-controller's own requests (it runs as a ServiceAccount): not what the tests measure.
- level: None
  users: ["system:serviceaccount:flux-system:helm-controller"]
# ServiceAccounts (only the chart tests' operators use one): the least-privilege proof.
- level: Metadata
  userGroups: ["system:serviceaccounts"]
- level: None
EOF

# kubeconfig FILE NAME [USER]: a kubeconfig for user NAME, authenticated as USER says (a
# flow mapping), by default the client certificate pki/NAME.{crt,key}.
kubeconfig() {
  local user=${3:-"{client-certificate: \"$pki/$2.crt\", client-key: \"$pki/$2.key\"}"}
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster: {server: "https://$api_ip:$P_API", certificate-authority: "$pki/ca.crt"}
users:
- name: $2
  user: $user
contexts:
- name: testenv
  context: {cluster: testenv, user: $2}
current-context: testenv
EOF
}
kubeconfig "$dir/kubeconfig" admin
export KUBECONFIG=$dir/kubeconfig
export PATH=$bin:$PATH   # kubectl of the same minor as the apiserver

start() { # name, command...
  local name=$1; shift
  "$@" >"$dir/logs/$name.log" 2>&1 9>&- &
  echo $! > "$dir/pids/$name"
}
wait_for() { # what, timeout-seconds, command...
  local what=$1 to=$2; shift 2
  local deadline=$((SECONDS + to))
  # Ready only if the process it started answers: another one left on the port would fool the
  # check, so a process that exited (e.g. "address already in use") fails at once.
  until "$@" >/dev/null 2>&1 && kill -0 "$(cat "$dir/pids/$what")" 2>/dev/null; do
    if ! kill -0 "$(cat "$dir/pids/$what")" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      log "timed out waiting for $what; last log lines:"; tail -n 30 "$dir/logs/$what.log" >&2 || true
      exit 1
    fi
    sleep 0.3
  done
}

start etcd "$bin/etcd" --name=testenv --data-dir="$dir/etcd" \
  --listen-client-urls="http://127.0.0.1:$P_ETCD" --advertise-client-urls="http://127.0.0.1:$P_ETCD" \
  --listen-peer-urls="http://127.0.0.1:$P_PEER" --initial-advertise-peer-urls="http://127.0.0.1:$P_PEER" \
  --initial-cluster="testenv=http://127.0.0.1:$P_PEER" --unsafe-no-fsync=true --log-level=warn \
  --listen-metrics-urls="http://127.0.0.1:$((base + 3))"
wait_for etcd 30 curl -sf "http://127.0.0.1:$P_ETCD/health"

# Without a node no pod ever runs: no ServiceAccount admission (it would wait for token
# volumes), RBAC only. With one, what a cluster has for pods: ServiceAccount admission, the Node
# authorizer for the kubelet, and a client certificate to reach the kubelet (logs, exec).
api_mode=(--authorization-mode=RBAC --disable-admission-plugins=ServiceAccount)
kcm_controllers=namespace,garbagecollector,serviceaccount,serviceaccount-token,clusterrole-aggregation
if [ "$node" = 1 ]; then
  api_mode=(--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction
    --kubelet-client-certificate="$pki/admin.crt" --kubelet-client-key="$pki/admin.key"
    --kubelet-preferred-address-types=Hostname,InternalIP)
  kcm_controllers=$kcm_controllers,deployment,replicaset,job,root-ca-cert-publisher,nodelifecycle,podgc
  # The host side of the pod network, on lo (not every kernel here has dummy interfaces).
  ip addr replace "$node_ip/32" dev lo
fi
apiserver=("$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$P_ETCD" \
  --bind-address="$api_ip" --advertise-address="$api_ip" --secure-port="$P_API" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" --token-auth-file="$pki/tokens.csv" \
  "${api_mode[@]}" --service-cluster-ip-range=10.0.0.0/24 \
  --service-account-issuer="https://127.0.0.1:$P_API" \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --allow-privileged=true --endpoint-reconciler-type=none \
  --audit-policy-file="$dir/audit-policy.yaml" --audit-log-path="$dir/logs/audit.log" --audit-log-maxsize=200)
# Kept for restart-apiserver.sh (the fault tests restart the apiserver under a running operator).
printf '%q ' "${apiserver[@]}" > "$dir/kube-apiserver.cmd"
start kube-apiserver "${apiserver[@]}"
wait_for kube-apiserver 90 kubectl get --raw /readyz

start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig="$KUBECONFIG" \
  --authentication-kubeconfig="$KUBECONFIG" --authorization-kubeconfig="$KUBECONFIG" \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --service-cluster-ip-range=10.0.0.0/24 --leader-elect=false \
  --controllers="$kcm_controllers" \
  --bind-address=127.0.0.1 --secure-port="$P_KCM" --cert-dir="$dir/kcm"

# shellcheck source=node-up.sh
[ "$node" = 1 ] && source "$here/node-up.sh"

log "applying Flux CRDs"
for c in "$crds"/*/; do
  kubectl apply --server-side --force-conflicts -f "$c" >/dev/null
done
kubectl create namespace flux-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd --all >/dev/null
# helm-controller runs as its own ServiceAccount, bound to cluster-admin as Flux's install
# binds it (cluster-reconciler): the identity fluxmedic's Helm actions borrow for a HelmRelease
# without spec.serviceAccountName, outside Flux's lockdown.
kubectl create serviceaccount helm-controller -n flux-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl create clusterrolebinding cluster-reconciler-helm-controller --clusterrole=cluster-admin \
  --serviceaccount=flux-system:helm-controller --dry-run=client -o yaml | kubectl apply -f - >/dev/null
hc_token=$(kubectl create token helm-controller -n flux-system --duration=48h)
kubeconfig "$dir/helm-controller.kubeconfig" helm-controller "{token: \"$hc_token\"}"

common=(--enable-leader-election=false --log-encoding=console --watch-all-namespaces=true)
# With a notification-controller, Flux's controllers post their events to it, as in a cluster.
flux_events=()
[ -x "$bin/notification-controller" ] && flux_events=(--events-addr="http://127.0.0.1:$P_NC_E/")
# Objects labelled fluxmedic.test/unreconciled are no controller's (the load harness writes their
# status itself and lets fluxmedic act on them), as objects of another shard are.
start source-controller env KUBECONFIG="$KUBECONFIG" "$bin/source-controller" "${common[@]}" "${flux_events[@]}" \
  --watch-label-selector='!fluxmedic.test/unreconciled' \
  --storage-path="$dir/artifacts" --storage-addr="127.0.0.1:$P_STORAGE" --storage-adv-addr="127.0.0.1:$P_STORAGE" \
  --metrics-addr="127.0.0.1:$P_SC_M" --health-addr="127.0.0.1:$P_SC_H"
start kustomize-controller env KUBECONFIG="$KUBECONFIG" "$bin/kustomize-controller" "${common[@]}" "${flux_events[@]}" \
  --watch-label-selector='!fluxmedic.test/unreconciled' \
  --metrics-addr="127.0.0.1:$P_KC_M" --health-addr="127.0.0.1:$P_KC_H"
# HelmReleases labelled fluxmedic.test/lockdown belong to a helm-controller a test starts under
# Flux's lockdown (--default-service-account), as a shard of its own.
start helm-controller env KUBECONFIG="$dir/helm-controller.kubeconfig" "$bin/helm-controller" "${common[@]}" "${flux_events[@]}" \
  --watch-label-selector='!fluxmedic.test/lockdown,!fluxmedic.test/unreconciled' \
  --metrics-addr="127.0.0.1:$P_HC_M" --health-addr="127.0.0.1:$P_HC_H"
if [ -x "$bin/notification-controller" ]; then
  start notification-controller env KUBECONFIG="$KUBECONFIG" "$bin/notification-controller" "${common[@]}" \
    --metrics-addr="127.0.0.1:$P_NC_M" --health-addr="127.0.0.1:$P_NC_H" \
    --events-addr="127.0.0.1:$P_NC_E" --receiverAddr="127.0.0.1:$P_NC_R"
fi
start fixture-server python3 "$here/fixture-server.py" --root "$dir/fixture" --port "$P_FIXTURE"
mkdir -p "$dir/fixture/registry-auth"
start registry "$bin/registry" serve -addr "127.0.0.1:$P_REGISTRY" -auth-dir "$dir/fixture/registry-auth"
mkdir -p "$dir/fixture/bucket-keys"
start bucket "$bin/bucket" serve -addr "127.0.0.1:$P_BUCKET" -keys-dir "$dir/fixture/bucket-keys"
wait_for source-controller 60 curl -sf "http://127.0.0.1:$P_SC_H/readyz"
wait_for kustomize-controller 60 curl -sf "http://127.0.0.1:$P_KC_H/readyz"
wait_for helm-controller 60 curl -sf "http://127.0.0.1:$P_HC_H/readyz"
wait_for fixture-server 30 curl -sf "http://127.0.0.1:$P_FIXTURE/healthz"
wait_for registry 30 sh -c "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$P_REGISTRY/v2/ | grep -q 401"
wait_for bucket 30 curl -sf "http://127.0.0.1:$P_BUCKET/"
events_url=
if [ -x "$bin/notification-controller" ]; then
  wait_for notification-controller 60 curl -sf "http://127.0.0.1:$P_NC_H/readyz"
  events_url=http://127.0.0.1:$P_NC_E/
fi

cat > "$dir/env.sh" <<EOF
export KUBECONFIG=$dir/kubeconfig
export FLUXMEDIC_TESTENV_DIR=$dir
export FLUXMEDIC_TESTENV_BIN=$bin
export FLUXMEDIC_FIXTURE_URL=http://127.0.0.1:$P_FIXTURE
export FLUXMEDIC_FIXTURE_ROOT=$dir/fixture
export FLUXMEDIC_REGISTRY=127.0.0.1:$P_REGISTRY
export FLUXMEDIC_BUCKET=127.0.0.1:$P_BUCKET
export FLUXMEDIC_HELM=$bin/helm
export FLUXMEDIC_API_URL=https://$api_ip:$P_API
export FLUXMEDIC_NODE=$node
export FLUXMEDIC_PORT_BASE=$base
export FLUXMEDIC_BENCH_TOKEN=$bench_token
export FLUXMEDIC_AUDIT_LOG=$dir/logs/audit.log
export FLUXMEDIC_FLUX=$flux
export FLUXMEDIC_HELM_CONTROLLER_KUBECONFIG=$dir/helm-controller.kubeconfig
export FLUXMEDIC_EVENTS_URL=$events_url
export FLUXMEDIC_NODE_CTR_ADDRESS=$([ "$node" = 1 ] && echo "$dir/n/containerd.sock")
export PATH=$bin:\$PATH
EOF
log "up in $((SECONDS - t0))s (Flux $flux): source $dir/env.sh"
echo "$dir/env.sh"
