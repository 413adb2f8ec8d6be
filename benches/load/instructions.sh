#!/usr/bin/env bash
# Instructions per request of a Switchyard binary, counted by callgrind: a figure that does not
# depend on what else the machine is doing, for comparing two builds (profiles, changes) where
# requests per second would drown in noise.
#
#   benches/load/instructions.sh [BINARY] [REQUESTS]
#   EXTRA='access_log: { enabled: true, path: /tmp/a.log }' benches/load/instructions.sh
#
# Runs BINARY (default target/release/switchyard) under `valgrind --tool=callgrind` in front of
# one nginx origin, and for each case sends REQUESTS (default 2000) keep-alive HTTP/1.1 requests
# over 10 connections with h2load after a warm-up, zeroing the counters before and dumping them
# after, so start-up and warm-up are not counted. Prints one line per case: instructions per
# request. Everything listens on 127.0.0.1 only; the temp dir and processes are removed after.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${1:-$ROOT/target/release/switchyard}
N=${2:-2000}
# shellcheck source=benches/load/common.sh
. "$ROOT/benches/load/common.sh"
start_work instr
need "valgrind, nginx, nghttp2-client" valgrind callgrind_control nginx h2load

mkdir -p "$WORK/www" "$WORK/logs"
head -c 1024 /dev/zero | tr '\0' 'x' > "$WORK/www/small"
cat > "$WORK/origin.conf" <<CONF
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/logs/origin.log warn;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:18901;
    root $WORK/www;
    location /pass/ { default_type application/json; add_header Cache-Control "no-store"; try_files /small =404; }
    location /hit/ { default_type application/json; add_header Cache-Control "max-age=600"; try_files /small =404; }
  }
}
CONF
nginx -c "$WORK/origin.conf" -p "$WORK" &
PIDS+=($!)

cat > "$WORK/sy.yaml" <<CONF
server: { listen: ["127.0.0.1:18902"], threads: 1, grace_period: 1s }
admin: { listen: "127.0.0.1:18903" }
upstreams:
  origin:
    backends: [{ address: "127.0.0.1:18901" }]
routes:
  - match: { path_prefix: /hit/ }
    upstream: origin
    cache: { enabled: true }
  - upstream: origin
${EXTRA:-}
CONF
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$BIN" --config "$WORK/sy.yaml" \
  >"$WORK/logs/sy.out" 2>"$WORK/logs/sy.err" &
SY=$!
PIDS+=($SY)
for _ in $(seq 1 600); do
  curl -sf -o /dev/null http://127.0.0.1:18902/pass/ready && break
  sleep 0.2
done

count() { # case path
  h2load --h1 -n 200 -c 10 "http://127.0.0.1:18902$2" >/dev/null
  callgrind_control -z "$SY" >/dev/null
  h2load --h1 -n "$N" -c 10 "http://127.0.0.1:18902$2" > "$WORK/h2load.out"
  grep -q "$N succeeded" "$WORK/h2load.out" || { echo "$1: not every request succeeded" >&2; cat "$WORK/h2load.out" >&2; exit 1; }
  callgrind_control -d "$1" "$SY" >/dev/null
  sleep 1
  local dump total
  dump=$(ls -t "$WORK"/cg.out.* | head -1)
  total=$(awk '/^totals:/ {print $2}' "$dump")
  echo "$1: $((total / N)) instructions per request ($N requests)"
}
count pass-through /pass/x
count cache-hit /hit/x
