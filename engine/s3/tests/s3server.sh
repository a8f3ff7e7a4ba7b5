#!/usr/bin/env bash
# A loopback S3-compatible server (moto, from PyPI) for the tessera-s3 tests.
#
#   s3server.sh run CMD [ARG...]  install moto if missing, start it on a free
#                                 127.0.0.1 port, create the bucket, export the
#                                 AWS_* variables and TESSERA_S3_BUCKET, run
#                                 CMD, stop the server; exits with CMD's status
#   s3server.sh start ENVFILE     the same up to the exports, which go to
#                                 ENVFILE (`source` it); the server keeps running
#   s3server.sh stop ENVFILE      stop the server that ENVFILE describes
#
# Example (what CI runs):
#   TESSERA_S3_REQUIRED=1 engine/s3/tests/s3server.sh run cargo test -p tessera-s3
#
# Environment: TESSERA_S3_BUCKET (default tessera-test); MOTO_SPEC (default
# 'moto[server]>=5.2,<6'; tested with 5.2.1. moto honours If-None-Match on
# PutObject since getmoto/moto#8109 (2024) and If-Match since #8869 (2025)).
set -euo pipefail

BUCKET=${TESSERA_S3_BUCKET:-tessera-test}
MOTO_SPEC=${MOTO_SPEC:-'moto[server]>=5.2,<6'}
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/tessera-s3/moto-venv

say() { printf 's3server: %s\n' "$*" >&2; }

# Puts a moto_server on PATH: the one there, else pip's, else a venv's.
ensure_moto() {
  if command -v moto_server >/dev/null 2>&1; then return 0; fi
  if [ -x "$VENV/bin/moto_server" ]; then PATH="$VENV/bin:$PATH"; return 0; fi
  say "moto_server not found; installing $MOTO_SPEC from PyPI"
  if python3 -m pip install --quiet "$MOTO_SPEC" >&2 && { hash -r; command -v moto_server >/dev/null 2>&1; }; then
    return 0
  fi
  say "pip install into the current Python failed; trying a venv at $VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --quiet "$MOTO_SPEC" >&2
  PATH="$VENV/bin:$PATH"
  command -v moto_server >/dev/null 2>&1 || { say "moto_server still missing after install"; return 1; }
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Creates the bucket (200, or 409 if it exists); fails while moto is not up.
create_bucket() {
  python3 - "$1" "$BUCKET" <<'EOF'
import sys, urllib.request, urllib.error
port, bucket = sys.argv[1], sys.argv[2]
req = urllib.request.Request(f"http://127.0.0.1:{port}/{bucket}", data=b"", method="PUT")
try:
    urllib.request.urlopen(req, timeout=5)
except urllib.error.HTTPError as e:
    sys.exit(0 if e.code == 409 else 1)
except OSError:
    sys.exit(1)
EOF
}

# Starts moto; sets PORT, PID and LOG.
start_server() {
  ensure_moto
  local attempt i
  for attempt in 1 2 3; do
    PORT=$(free_port)
    LOG=$(mktemp "${TMPDIR:-/tmp}/tessera-moto.XXXXXX")
    moto_server -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
    PID=$!
    for i in $(seq 1 150); do
      if create_bucket "$PORT"; then
        say "moto_server (pid $PID) on 127.0.0.1:$PORT, bucket $BUCKET"
        return 0
      fi
      kill -0 "$PID" 2>/dev/null || break
      sleep 0.2
    done
    kill "$PID" 2>/dev/null || true
    say "attempt $attempt: moto did not come up on port $PORT; its log:"
    tail -n 5 "$LOG" >&2 || true
    rm -f "$LOG"
  done
  return 1
}

exports() {
  cat <<EOF
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT
export AWS_ALLOW_HTTP=true
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
export TESSERA_S3_BUCKET=$BUCKET
unset AWS_ENDPOINT AWS_ENDPOINT_URL_S3 AWS_SESSION_TOKEN AWS_PROFILE
S3SERVER_PID=$PID
S3SERVER_LOG=$LOG
EOF
}

stop_pid() {
  kill "$1" 2>/dev/null || true
  # Not our child when stopped from another shell: poll instead of `wait`.
  for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}

case "${1:-}" in
  run)
    shift
    [ "$#" -gt 0 ] || { say "usage: $0 run CMD [ARG...]"; exit 2; }
    start_server
    trap 'stop_pid "$PID"; rm -f "$LOG"' EXIT
    eval "$(exports)"
    status=0
    "$@" || status=$?
    exit "$status"
    ;;
  start)
    [ -n "${2:-}" ] || { say "usage: $0 start ENVFILE"; exit 2; }
    start_server
    exports >"$2"
    say "wrote $2; source it, and run '$0 stop $2' when done"
    ;;
  stop)
    [ -f "${2:-}" ] || { say "usage: $0 stop ENVFILE"; exit 2; }
    pid=$(sed -n 's/^S3SERVER_PID=//p' "$2")
    log=$(sed -n 's/^S3SERVER_LOG=//p' "$2")
    [ -n "$pid" ] && stop_pid "$pid"
    [ -n "$log" ] && rm -f "$log"
    rm -f "$2"
    ;;
  *)
    sed -n '2,19p' "$0" >&2
    exit 2
    ;;
esac
