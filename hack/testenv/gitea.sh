#!/usr/bin/env bash
# Builds Gitea (the forge the revert pull requests are tested against) from the Go module
# proxy into the test environment's component cache, and prints the binary's path.
# Not part of the test command yet: it joins build.sh once a test uses the forge.
#
# Gitea is required through a small wrapper module with the `replace` directives of Gitea's own
# go.mod at that tag (a module's replaces do not apply to its dependents); never `go mod tidy`
# there: one of Gitea's indirect dependencies is refused by the proxy and tidy would fetch it.
# Built with cgo for SQLite (tags sqlite sqlite_unlock_notify), without bindata: the server is
# pointed at the module's own templates and assets (STATIC_ROOT_PATH) when it starts.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tools.env
source "$here/tools.env"
version=${GITEA_VERSION:?GITEA_VERSION is pinned in tools.env}
export GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false" CGO_ENABLED=1
gover=$(go env GOVERSION)
cache=${FLUXMEDIC_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fluxmedic/testenv}
out=$cache/components/gitea-$version-$gover
if [ -x "$out/gitea" ]; then echo "$out/gitea"; exit 0; fi
command -v gcc >/dev/null || { echo "gcc is required (cgo, SQLite)" >&2; exit 1; }
started=$(date +%s)
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
gomod=$(go mod download -json "code.gitea.io/gitea@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
goline=$(grep -m1 '^go ' "$gomod")
{
  echo "module fluxmedic.local/gitea"
  echo
  echo "$goline"
  echo
  grep '^replace ' "$gomod"
} >"$src/go.mod"
cd "$src"
go get "code.gitea.io/gitea@$version" >&2
mkdir -p "$out.tmp"
go build -tags "sqlite sqlite_unlock_notify" -ldflags "-s -w -X main.Version=${version#v}" -o "$out.tmp/gitea" code.gitea.io/gitea >&2
rm -rf "$out" && mv "$out.tmp" "$out"
echo "[testenv gitea] built $version in $(($(date +%s) - started)) s" >&2
echo "$out/gitea"
