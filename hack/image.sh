#!/usr/bin/env bash
# Builds the fluxmedic image without a container engine or registry, from the same binaries the
# Dockerfile's final stage holds: a static fluxmedic (release) and helm at HELM_VERSION, with the
# Dockerfile's USER, ENTRYPOINT and CMD read from the Dockerfile itself, on the files of the
# distroless/static:nonroot base that fluxmedic uses (passwd/group naming 65532, CA bundle, /tmp).
# Writes a docker-archive tarball (`ctr images import` loads it) and prints its path.
#
#   hack/image.sh [TAG]     # default fluxmedic.local/fluxmedic:<Cargo version>
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log() { echo "[image $(date +%H:%M:%S)] $*" >&2; }
# shellcheck source=testenv/versions.env
source hack/testenv/versions.env
# Beside the test control plane's cache (build.sh), outside the checkout.
cache=$(dirname "${FLUXMEDIC_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fluxmedic/testenv}")
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
tag=${1:-fluxmedic.local/fluxmedic:$version}

# The Dockerfile's final stage: what it copies from which stage, and how it starts.
final=$(awk '/^FROM /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' Dockerfile)
user=$(printf '%s' "$final" | sed -n 's/^USER \(.*\)/\1/p' | tail -n1)
entrypoint=$(printf '%s' "$final" | sed -n 's/^ENTRYPOINT \(.*\)/\1/p' | tail -n1)
cmd=$(printf '%s' "$final" | sed -n 's/^CMD \(.*\)/\1/p' | tail -n1)
[ -n "$user" ] && [ -n "$entrypoint" ] || { echo "no USER/ENTRYPOINT in the Dockerfile's final stage" >&2; exit 1; }

# The helm the Dockerfile installs must be the one pinned for the tests.
grep -q "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" Dockerfile \
  || { echo "the Dockerfile's helm is not HELM_VERSION=$HELM_VERSION (versions.env)" >&2; exit 1; }
# helm and the image writer (go-containerregistry) come from the test control plane's build.
tools=$(bash hack/testenv/build.sh --node | tail -n1)
helm_bin=$tools/helm

# fluxmedic, built as the Dockerfile's build stage builds it: the static musl target, with
# musl-gcc for the C in ring (installed here when missing, as the Dockerfile installs it). Its
# own target dir, outside the checkout, so the target never invalidates the test build.
target=x86_64-unknown-linux-musl
if ! command -v musl-gcc >/dev/null; then
  log "installing musl-tools (the Dockerfile's build stage has them)"
  { apt-get install -y --no-install-recommends musl-tools || { apt-get update && apt-get install -y --no-install-recommends musl-tools; }; } >&2
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target" >&2
log "building fluxmedic for $target"
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
CARGO_TARGET_DIR=$cache/image-target FLUXMEDIC_REVISION=$revision \
  cargo build --locked --release --target "$target" --bin fluxmedic >&2
bin=$cache/image-target/$target/release/fluxmedic
# What the Dockerfile's build stage runs, word for word, must be this build.
grep -q 'cargo build --locked --release --target "$target" --bin fluxmedic' Dockerfile \
  || { echo "the Dockerfile's build stage no longer builds as hack/image.sh does" >&2; exit 1; }

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$work/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$work/group"
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || { echo "no CA bundle at $ca (apt-get install ca-certificates)" >&2; exit 1; }

# Each COPY of the final stage, mapped to the local binary that stage builds.
files=()
while read -r _ from src dst; do
  case "$from $src" in
    "--from=build /fluxmedic") files+=(-file "$bin=$dst:0755") ;;
    "--from=helm /out/helm") files+=(-file "$helm_bin=$dst:0755") ;;
    *) echo "hack/image.sh does not know how to build the Dockerfile's COPY $from $src $dst" >&2; exit 1 ;;
  esac
done < <(printf '%s' "$final" | grep '^COPY ')

# The final stage's LABELs (continuation lines joined), its ARGs as the release sets them.
labels=()
while IFS= read -r kv; do
  labels+=(-label "$kv")
done < <(printf '%s' "$final" | awk '/\\$/ {printf "%s", substr($0, 1, length($0) - 1); next} {print}' \
  | sed -n 's/^LABEL //p' | grep -o '[a-z.]*="[^"]*"' \
  | sed -e "s/\$VERSION/$version/" -e "s/\$REVISION/$revision/" -e 's/="\(.*\)"$/=\1/')
[ "${#labels[@]}" -gt 0 ] || { echo "no LABEL in the Dockerfile's final stage" >&2; exit 1; }

mkdir -p "$cache/images"
out=$cache/images/fluxmedic-$version.tar
"$tools/image-tool" -out "$out" -tag "$tag" -user "$user" -entrypoint "$entrypoint" -cmd "${cmd:-[]}" \
  "${labels[@]}" "${files[@]}" -file "$work/passwd=/etc/passwd:0644" -file "$work/group=/etc/group:0644" \
  -file "$ca=/etc/ssl/certs/ca-certificates.crt:0644" -dir /tmp:1777 -dir /home/nonroot:0755
log "wrote $tag to $out"
echo "$out"
