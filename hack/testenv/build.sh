#!/usr/bin/env bash
# Builds the test control plane from pinned Go modules into a cache outside the checkout:
#   $FLUXMEDIC_TESTENV_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/fluxmedic/testenv)
#     components/<name>-<version>-<go version>/   each component, built once per version
#     sets/<flux release>-<hash>/bin, crds/        one control plane's binaries (links) and CRDs
# Prints the set's bin directory on the last line of stdout. A warm run takes a second;
# changing one pinned version rebuilds only that component.
#
#   build.sh [--flux 2.9|2.7]      # the Flux release (default: $FLUXMEDIC_FLUX, else FLUX_DEFAULT)
#   build.sh --node                # also the node: kubelet, kube-scheduler, containerd, runc,
#                                  # CNI plugins, crictl, pause (or FLUXMEDIC_TESTENV_NODE=1)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=tools.env
source "$here/tools.env"
flux=${FLUXMEDIC_FLUX:-$FLUX_DEFAULT}
node=${FLUXMEDIC_TESTENV_NODE:-0}
while [ $# -gt 0 ]; do
  case $1 in
    --flux) flux=${2:?--flux needs a release, e.g. 2.9}; shift ;;
    --node) node=1 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
tag=${flux//./_}
release_var=FLUX_$tag
[ -n "${!release_var:-}" ] || { echo "Flux $flux is not pinned in versions.env" >&2; exit 2; }
sc_var=FLUX_${tag}_SOURCE_CONTROLLER kc_var=FLUX_${tag}_KUSTOMIZE_CONTROLLER
hc_var=FLUX_${tag}_HELM_CONTROLLER nc_var=FLUX_${tag}_NOTIFICATION_CONTROLLER
SC=${!sc_var} KC=${!kc_var} HC=${!hc_var} NC=${!nc_var:-}

command -v go >/dev/null || { echo "go is required (Go >= 1.26)" >&2; exit 1; }
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false"
gover=$(go env GOVERSION)
cache=${FLUXMEDIC_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fluxmedic/testenv}
set_id=$(printf '%s\n' "$KUBERNETES_VERSION" "$ETCD_VERSION" "$HELM_VERSION" "$SC" "$KC" "$HC" "$NC" \
  "$PROMETHEUS_VERSION" "$ACTIONLINT_VERSION" "$CONTAINERD_VERSION" "$RUNC_VERSION" "$CNI_PLUGINS_VERSION" "$CRI_TOOLS_VERSION" "$gover" | sha256sum | cut -c1-12)
set_dir=$cache/sets/$flux-$set_id
bin=$set_dir/bin
mkdir -p "$bin" "$set_dir/crds" "$cache/components"
# One builder per cache at a time: two (a demo and a test run, two shells) would otherwise
# remove each other's half-built components.
exec 8>"$cache/.build.lock"
flock 8

log() { echo "[testenv build $(date +%H:%M:%S)] $*" >&2; }
comp() { echo "$cache/components/$1-$2-$gover"; }

build_etcd() { # dir version
  local src; src=$(mktemp -d); cd "$src"
  go mod init fluxmedic.local/etcd >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$2"
  go build -ldflags "-s -w" -o "$1/etcd" go.etcd.io/etcd/server/v3
  rm -rf "$src"
}

# kube_cmds DIR VERSION CMD...: build commands of k8s.io/kubernetes at VERSION into DIR.
kube_cmds() {
  local d=$1 v=$2 src minor patch gomod; shift 2
  src=$(mktemp -d); cd "$src"
  minor=$(echo "$v" | cut -d. -f2); patch=$(echo "$v" | cut -d. -f3)
  gomod=$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  go mod init fluxmedic.local/kubernetes >/dev/null 2>&1
  go mod edit -go="$(sed -n 's/^go //p' "$gomod")"
  local gd; gd=$(sed -n 's/^godebug //p' "$gomod"); [ -n "$gd" ] && go mod edit -godebug="$gd"
  # Every staging module is replaced by a local path in k8s.io/kubernetes; point each at its tag.
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod" | while read -r m; do
    go mod edit -replace="$m=$m@v0.$minor.$patch"
  done
  local c
  for c in "$@"; do go get "k8s.io/kubernetes/cmd/$c@$v"; done
  local p ld="-s -w" date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  for c in "$@"; do go build -ldflags "$ld" -o "$d/$c" "k8s.io/kubernetes/cmd/$c"; done
  cd / && rm -rf "$src"
}

build_kube() { # dir version
  kube_cmds "$1" "$2" kube-apiserver kube-controller-manager kubectl
}

# The node's Kubernetes side: kubelet, kube-scheduler, and the pause binary every pod sandbox
# runs (compiled from the module's own source, so no image is ever pulled).
build_kube_node() { # dir version
  kube_cmds "$1" "$2" kubelet kube-scheduler
  local src; src=$(go mod download -json "k8s.io/kubernetes@$2" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  gcc -Os -Wall -Werror -static -DVERSION="$2" -o "$1/pause" "$src/build/pause/linux/pause.c"
}

# containerd with the CRI plugin, its runc shim and ctr; no cgo, no exotic snapshotters.
build_containerd() { # dir version
  CGO_ENABLED=0 GOBIN=$1 go install -ldflags "-s -w" -tags no_btrfs,no_devmapper,no_zfs \
    "github.com/containerd/containerd/v2/cmd/containerd@$2" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$2" \
    "github.com/containerd/containerd/v2/cmd/ctr@$2"
}

# runc needs cgo and libseccomp for the RuntimeDefault seccomp profile the chart asks for.
build_runc() { # dir version
  CGO_ENABLED=1 GOBIN=$1 go install -ldflags "-s -w" -tags seccomp "github.com/opencontainers/runc@$2"
}

build_cni() { # dir version
  local p
  for p in main/ptp main/loopback ipam/host-local; do
    GOBIN=$1 go install -ldflags "-s -w" "github.com/containernetworking/plugins/plugins/$p@$2"
  done
}

# The image writer (hack/image, go-containerregistry): the node's pause image and hack/image.sh.
build_image_tool() { # dir version
  cd "$here/../image" && go build -ldflags "-s -w" -o "$1/image-tool" .
}

# The tests' OCI registry and artifact pusher (hack/registry, go-containerregistry).
build_registry() { # dir version
  cd "$here/../registry" && go build -ldflags "-s -w" -o "$1/registry" .
}

# The tests' S3-compatible bucket server (hack/bucket, gofakes3).
build_bucket() { # dir version
  cd "$here/../bucket" && go build -ldflags "-s -w" -o "$1/bucket" .
}

build_crictl() { # dir version
  GOBIN=$1 go install -ldflags "-s -w" "sigs.k8s.io/cri-tools/cmd/crictl@$2"
}

build_flux() { # dir version name
  local d=$1 v=$2 name=$3 src work
  src=$(go mod download -json "github.com/fluxcd/$name@$v" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  work=$(mktemp -d); cp -r "$src/." "$work"; chmod -R u+w "$work"; cd "$work"
  # ./api is its own module and is not in the parent's zip: use the tagged api module.
  go mod edit -dropreplace="github.com/fluxcd/$name/api"
  GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w" -o "$d/$name" .
  mkdir -p "$d/crds"; cp "$src"/config/crd/bases/*.yaml "$d/crds/"
  rm -rf "$work"
}

build_helm() { # dir version
  GOBIN=$1 go install -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$2" "helm.sh/helm/v4/cmd/helm@$2"
}

build_promtool() { # dir version
  GOBIN=$1 go install -ldflags "-s -w" "github.com/prometheus/prometheus/cmd/promtool@$2"
}

build_actionlint() { # dir version
  GOBIN=$1 go install -ldflags "-s -w" "github.com/rhysd/actionlint/cmd/actionlint@$2"
}

# ensure NAME VERSION BUILDER BINARY...: build the component unless cached, link it into the set.
ensure() {
  local name=$1 version=$2 builder=$3; shift 3
  local d b missing=false
  d=$(comp "$name" "$version")
  for b in "$@"; do [ -x "$d/$b" ] || missing=true; done
  if $missing; then
    local t0=$SECONDS
    log "building $name $version ..."
    rm -rf "$d.tmp"; mkdir -p "$d.tmp"
    ( "$builder" "$d.tmp" "$version" "$name" ) >&2
    rm -rf "$d"; mv "$d.tmp" "$d"
    log "built $name $version in $((SECONDS - t0))s"
  fi
  for b in "$@"; do ln -sfn "$d/$b" "$bin/$b"; done
  if [ -d "$d/crds" ]; then ln -sfn "$d/crds" "$set_dir/crds/$name"; fi
}

ensure etcd "$ETCD_VERSION" build_etcd etcd
ensure kubernetes "$KUBERNETES_VERSION" build_kube kube-apiserver kube-controller-manager kubectl
ensure source-controller "$SC" build_flux source-controller
ensure kustomize-controller "$KC" build_flux kustomize-controller
ensure helm-controller "$HC" build_flux helm-controller
if [ -n "$NC" ]; then
  ensure notification-controller "$NC" build_flux notification-controller
else
  rm -f "$bin/notification-controller" "$set_dir/crds/notification-controller"
fi
ensure helm "$HELM_VERSION" build_helm helm
ensure promtool "$PROMETHEUS_VERSION" build_promtool promtool
ensure actionlint "$ACTIONLINT_VERSION" build_actionlint actionlint
registry_id=$(cat "$here"/../registry/go.mod "$here"/../registry/go.sum "$here"/../registry/main.go | sha256sum | cut -c1-12)
ensure registry "$registry_id" build_registry registry
bucket_id=$(cat "$here"/../bucket/go.mod "$here"/../bucket/go.sum "$here"/../bucket/main.go | sha256sum | cut -c1-12)
ensure bucket "$bucket_id" build_bucket bucket
if [ "$node" = 1 ]; then
  ensure kubernetes-node "$KUBERNETES_VERSION" build_kube_node kubelet kube-scheduler pause
  ensure containerd "$CONTAINERD_VERSION" build_containerd containerd containerd-shim-runc-v2 ctr
  ensure runc "$RUNC_VERSION" build_runc runc
  ensure cni-plugins "$CNI_PLUGINS_VERSION" build_cni ptp loopback host-local
  ensure crictl "$CRI_TOOLS_VERSION" build_crictl crictl
  tool_id=$(cat "$here"/../image/go.mod "$here"/../image/go.sum "$here"/../image/main.go | sha256sum | cut -c1-12)
  ensure image-tool "$tool_id" build_image_tool image-tool
fi
echo "$flux" > "$set_dir/flux-release"
log "Flux $flux (${!release_var}): all components in $bin"
echo "$bin"
