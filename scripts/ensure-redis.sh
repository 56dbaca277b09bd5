#!/usr/bin/env bash
# Makes sure a Redis answers at REDIS_URL (default redis://127.0.0.1:6379/0); starts a local one if it can.
set -euo pipefail
url="${REDIS_URL:-redis://127.0.0.1:6379/0}"

answers() {
    python3 - "$url" <<'PY'
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
try:
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=2) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(64).startswith((b"+PONG", b"-NOAUTH")) else 1)
except OSError:
    sys.exit(1)
PY
}

answers && exit 0
host=$(python3 -c "import sys,urllib.parse as p; print(p.urlparse(sys.argv[1]).hostname or '127.0.0.1')" "$url")
port=$(python3 -c "import sys,urllib.parse as p; print(p.urlparse(sys.argv[1]).port or 6379)" "$url")
if [[ "$host" != "127.0.0.1" && "$host" != "localhost" ]]; then
    echo "No Redis answers at $url, and it is not on this machine: start it there, or set REDIS_URL." >&2
    exit 1
fi
if ! command -v redis-server >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
    else
        echo "No Redis answers at $url and redis-server is not installed." >&2
        echo "Install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)," >&2
        echo "or run one in a container: docker run -p 6379:6379 redis:7, or point REDIS_URL at yours." >&2
        exit 1
    fi
fi
echo "Starting a local redis-server on port $port (no persistence)." >&2
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no
for _ in $(seq 50); do answers && exit 0; sleep 0.1; done
echo "redis-server did not start on port $port" >&2
exit 1
