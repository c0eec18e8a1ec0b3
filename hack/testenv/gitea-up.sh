#!/usr/bin/env bash
# Starts Gitea (built by gitea.sh) on loopback for the forge tests, with an admin user and an
# API token, and writes $dir/gitea.env (FLUXMEDIC_GITEA_URL, FLUXMEDIC_GITEA_TOKEN).
#   bash hack/testenv/gitea-up.sh [dir]      (default /tmp/fluxmedic-gitea)
#   source /tmp/fluxmedic-gitea/gitea.env && cargo test --test forge -- --ignored
# Stop it with: bash hack/testenv/gitea-up.sh --down [dir]
# Not part of the test command yet.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = "--down" ]; then
  dir=${2:-/tmp/fluxmedic-gitea}
  [ -f "$dir/gitea.pid" ] && kill "$(cat "$dir/gitea.pid")" 2>/dev/null || true
  rm -f "$dir/gitea.pid"
  exit 0
fi
dir=${1:-/tmp/fluxmedic-gitea}
gitea=$(bash "$here/gitea.sh")
source "$here/tools.env"
if [ -f "$dir/gitea.pid" ] && kill -0 "$(cat "$dir/gitea.pid")" 2>/dev/null; then
  echo "$dir/gitea.env"
  exit 0
fi
rm -rf "$dir" && mkdir -p "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
static=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "code.gitea.io/gitea@$GITEA_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
secret=$(head -c 32 /dev/urandom | base64 | tr -d '=+/')
cat >"$dir/app.ini" <<EOF
APP_NAME = fluxmedic-test
RUN_MODE = prod
WORK_PATH = $dir
[server]
HTTP_ADDR = 127.0.0.1
HTTP_PORT = $port
ROOT_URL = http://127.0.0.1:$port/
DISABLE_SSH = true
START_SSH_SERVER = false
OFFLINE_MODE = true
LFS_START_SERVER = false
STATIC_ROOT_PATH = $static
APP_DATA_PATH = $dir/data
[database]
DB_TYPE = sqlite3
PATH = $dir/gitea.db
[repository]
ROOT = $dir/repos
DEFAULT_BRANCH = main
[security]
INSTALL_LOCK = true
SECRET_KEY = $secret
[service]
DISABLE_REGISTRATION = true
[mailer]
ENABLED = false
[session]
PROVIDER = memory
[cache]
ADAPTER = memory
[indexer]
REPO_INDEXER_ENABLED = false
[log]
MODE = file
ROOT_PATH = $dir/log
LEVEL = Warn
EOF
# Gitea refuses to start as root unless told (the test machine runs as root).
export GITEA_I_AM_BEING_UNSAFE_RUNNING_AS_ROOT=true GITEA_WORK_DIR=$dir
"$gitea" -c "$dir/app.ini" migrate >"$dir/setup.log" 2>&1
"$gitea" -c "$dir/app.ini" admin user create --username fluxmedic-test --password "p-$secret" \
  --email test@fluxmedic.invalid --admin --must-change-password=false >>"$dir/setup.log" 2>&1
token=$("$gitea" -c "$dir/app.ini" admin user generate-access-token --username fluxmedic-test \
  --token-name tests --scopes all --raw 2>>"$dir/setup.log" | tail -1)
nohup "$gitea" -c "$dir/app.ini" web >"$dir/web.log" 2>&1 &
echo $! >"$dir/gitea.pid"
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$port/api/v1/version" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/api/v1/version" >/dev/null || { tail -20 "$dir/web.log" >&2; exit 1; }
umask 077
cat >"$dir/gitea.env" <<EOF
export FLUXMEDIC_GITEA_URL=http://127.0.0.1:$port
export FLUXMEDIC_GITEA_TOKEN=$token
EOF
echo "$dir/gitea.env"
