#!/usr/bin/env bash
# Builds the test control plane from pinned Go modules, once, into a cache
# outside the checkout:  $FLUXMEDIC_TESTENV_CACHE (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/fluxmedic/testenv/<versions-hash>/).
# Prints the bin directory on the last line of stdout. A warm run takes seconds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

command -v go >/dev/null || { echo "go is required (Go >= 1.26)" >&2; exit 1; }
# The cache key is the pinned versions and the Go toolchain; after changing how a component
# is built, remove its binary from the cache (or the whole directory) to rebuild it.
key=$( (grep -v '^#' "$here/versions.env"; go env GOVERSION) | sha256sum | cut -c1-12)
root=${FLUXMEDIC_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fluxmedic/testenv}/$key
bin=$root/bin
mkdir -p "$bin" "$root/src"

export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false"
log() { echo "[testenv build $(date +%H:%M:%S)] $*" >&2; }
have() { [ -x "$bin/$1" ]; }
timed() { local name=$1; shift; local t0=$SECONDS; log "building $name ..."; "$@" >&2; log "built $name in $((SECONDS - t0))s"; }

build_etcd() {
  local d=$root/src/etcd; rm -rf "$d"; mkdir -p "$d"; cd "$d"
  go mod init fluxmedic.local/etcd >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go build -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
}

build_kube() {
  local d=$root/src/kubernetes; rm -rf "$d"; mkdir -p "$d"; cd "$d"
  local minor patch gomod
  minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2); patch=$(echo "$KUBERNETES_VERSION" | cut -d. -f3)
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  go mod init fluxmedic.local/kubernetes >/dev/null 2>&1
  go mod edit -go="$(sed -n 's/^go //p' "$gomod")"
  local gd; gd=$(sed -n 's/^godebug //p' "$gomod"); [ -n "$gd" ] && go mod edit -godebug="$gd"
  # Every staging module is replaced by a local path in k8s.io/kubernetes; point each at its tag.
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod" | while read -r m; do
    go mod edit -replace="$m=$m@v0.$minor.$patch"
  done
  local c; for c in "$@"; do go get "k8s.io/kubernetes/cmd/$c@$KUBERNETES_VERSION"; done
  local v=k8s.io/component-base/version c=k8s.io/client-go/pkg/version date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="-s -w"
  for p in $v $c; do
    ld="$ld -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  for cmd in "$@"; do go build -ldflags "$ld" -o "$bin/$cmd" "k8s.io/kubernetes/cmd/$cmd"; done
}

build_flux_controller() {
  local name=$1 version=$2 src d
  src=$(go mod download -json "github.com/fluxcd/$name@$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  d=$root/src/$name; rm -rf "$d"; cp -r "$src" "$d"; chmod -R u+w "$d"; cd "$d"
  # ./api is its own module and is not in the parent's zip: use the tagged api module.
  go mod edit -dropreplace="github.com/fluxcd/$name/api"
  GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w" -o "$bin/$name" .
  mkdir -p "$root/crds/$name"; cp "$src"/config/crd/bases/*.yaml "$root/crds/$name/"
}

build_helm() {
  GOBIN=$bin go install -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
}

# Tools beside the control plane: built into a cache of their own, keyed by their version,
# and copied into the bin directory.
# shellcheck source=tools.env
source "$here/tools.env"
tools=${FLUXMEDIC_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fluxmedic/testenv}/tools
build_promtool() {
  local d=$tools/promtool-$PROMETHEUS_VERSION-$(go env GOVERSION)
  if [ ! -x "$d/promtool" ]; then
    mkdir -p "$d"
    GOBIN=$d go install -ldflags "-s -w" "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
  fi
  cp "$d/promtool" "$bin/promtool"
}

have etcd || timed "etcd $ETCD_VERSION" build_etcd
{ have kube-apiserver && have kube-controller-manager && have kubectl; } || timed "kube-apiserver, kube-controller-manager, kubectl $KUBERNETES_VERSION" build_kube kube-apiserver kube-controller-manager kubectl
have source-controller || timed "source-controller $SOURCE_CONTROLLER_VERSION" build_flux_controller source-controller "$SOURCE_CONTROLLER_VERSION"
have kustomize-controller || timed "kustomize-controller $KUSTOMIZE_CONTROLLER_VERSION" build_flux_controller kustomize-controller "$KUSTOMIZE_CONTROLLER_VERSION"
have helm-controller || timed "helm-controller $HELM_CONTROLLER_VERSION" build_flux_controller helm-controller "$HELM_CONTROLLER_VERSION"
have helm || timed "helm $HELM_VERSION" build_helm
have promtool || timed "promtool (Prometheus $PROMETHEUS_VERSION)" build_promtool
rm -rf "$root/src"
log "all components in $bin"
echo "$bin"
