#!/usr/bin/env bash
# Chaos soak: keep-alive load through Switchyard while backends are killed and restarted, the
# config is reloaded, redis-server restarts, prefixes are purged and SIGHUP arrives.
#
#   benches/load/soak.sh            10 minutes
#   benches/load/soak.sh 30s        any duration (ms, s, m, h)
#   benches/load/soak.sh 2m --threads 1 --rate 1000   more options: soak.py --help
#
# Builds the release binary unless SWITCHYARD_BIN names one. Exits non-zero on any lost request,
# RSS growth over 25% after warm-up, or open-fd growth over 64 (see soak.py).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DURATION=${1:-10m}
shift || true

command -v redis-server >/dev/null 2>&1 || { echo "soak: redis-server is required" >&2; exit 2; }
BIN=${SWITCHYARD_BIN:-}
if [ -z "$BIN" ]; then
  echo "soak: building switchyard (release)" >&2
  # The path from cargo's own report: right whatever the target directory is.
  BIN=$(cd "$ROOT" && cargo build --release --bin switchyard --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])
    elif m.get("reason") == "compiler-message":
        # Errors and warnings would otherwise be lost in the JSON stream.
        print(m["message"].get("rendered", ""), file=sys.stderr, end="")')
  [ -x "$BIN" ] || { echo "soak: cargo built no switchyard binary" >&2; exit 2; }
fi
ulimit -n 65536 2>/dev/null || true
exec python3 "$ROOT/benches/load/soak.py" --bin "$BIN" --duration "$DURATION" "$@"
