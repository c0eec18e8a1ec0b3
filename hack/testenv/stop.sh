# Sourced by down.sh and node-down.sh: stop_pid NAME [TENTHS] stops the process up.sh recorded
# in $dir/pids/NAME: SIGTERM, up to TENTHS tenths of a second (default 50) to exit, then SIGKILL.
stop_pid() {
  local f=$dir/pids/$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 "${2:-50}"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}
