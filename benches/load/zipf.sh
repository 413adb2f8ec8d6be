#!/usr/bin/env bash
# Hit ratio on a Zipf key stream, through the real proxy and through nginx's proxy_cache: the
# same stream of requests for 100,000 distinct keys (1 KiB objects), each cache sized to hold
# about 10% of them, and the ratio read from what reached the origin.
#
#   benches/load/zipf.sh [REQUESTS] [S...]      defaults: 300000 requests, s = 1.0 and 0.8
#
# The stream is made once per exponent with a fixed seed and sent by `h2load --h1 -c1` (one
# connection, in order) to each contender in turn; every contender starts empty. Hits are
# 1 - (requests the origin saw ÷ requests sent). Switchyard is sized with `cache.max_size` and
# charges each entry what it costs in memory; nginx is sized with `max_size` on disk (each
# 1 KiB object takes one 4 KiB block). The report says how many entries each held at the end,
# so that the comparison is of equal room. Everything listens on 127.0.0.1; the temp dir and
# processes are removed after.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
N=${1:-300000}
shift || true
EXPONENTS=("$@")
[ ${#EXPONENTS[@]} -eq 0 ] && EXPONENTS=(1.0 0.8)
KEYS=100000
BIN=${BIN:-$ROOT/target/release/switchyard}
# shellcheck source=benches/load/common.sh
. "$ROOT/benches/load/common.sh"
start_work zipf
need "nginx, nghttp2-client, curl" nginx h2load curl python3
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --quiet --bin switchyard)

mkdir -p "$WORK/www" "$WORK/logs"
head -c 1024 /dev/zero | tr '\0' 'x' > "$WORK/www/small"
cat > "$WORK/origin.conf" <<CONF
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/logs/origin.log warn;
daemon off;
events { worker_connections 1024; }
http {
  keepalive_requests 10000000;
  log_format uri '\$request_uri';
  server {
    listen 127.0.0.1:18501;
    access_log $WORK/logs/origin-access.log uri;
    root $WORK/www;
    location /k/ { default_type application/json; add_header Cache-Control "max-age=3600";
                   try_files /small =404; }
  }
}
CONF
nginx -c "$WORK/origin.conf" -p "$WORK" &
PIDS+=($!)

origin_requests() { wc -l < "$WORK/logs/origin-access.log" 2>/dev/null || echo 0; }
wait_http() { for _ in $(seq 1 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }

# The streams: key k (0-based rank) with probability ∝ 1/(k+1)^s, shuffled names so that
# popular keys are spread over the key space.
for s in "${EXPONENTS[@]}"; do
  python3 - "$KEYS" "$N" "$s" "$WORK/stream-$s.txt" <<'PY'
import bisect, itertools, random, sys
keys, n, s, path = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rng = random.Random(42)
weights = [1 / (k + 1) ** s for k in range(keys)]
cum = list(itertools.accumulate(weights))
names = list(range(keys))
rng.shuffle(names)
with open(path, "w") as out:
    for _ in range(n):
        k = bisect.bisect_left(cum, rng.random() * cum[-1])
        out.write(f"/k/{names[k]}\n")
PY
done

report=()
run() { # name port stream-file
  local before after
  before=$(origin_requests)
  h2load --h1 -c1 -m1 -n "$N" -i <(sed "s|^|http://127.0.0.1:$2|" "$3") >"$WORK/logs/h2load-$1.txt" 2>&1
  sleep 1
  after=$(origin_requests)
  python3 -c "print(f'{1 - ($after - $before) / $N:.4f}')"
}

for s in "${EXPONENTS[@]}"; do
  stream=$WORK/stream-$s.txt
  # Switchyard: 10,000 entries of a 1 KiB body and nginx's header fields are about 35 MiB
  # charged (see the README's cache section for what an entry is charged).
  cat > "$WORK/sy.yaml" <<CONF
server: { listen: ["127.0.0.1:18502"], threads: 1, grace_period: 1s }
admin: { listen: "127.0.0.1:18503" }
cache: { max_size: 35MiB }
upstreams:
  origin: { backends: [{ address: "127.0.0.1:18501" }] }
routes:
  - upstream: origin
    cache: { enabled: true }
CONF
  "$BIN" --config "$WORK/sy.yaml" >"$WORK/logs/sy.out" 2>"$WORK/logs/sy.err" &
  SY=$!
  PIDS+=($SY)
  wait_http http://127.0.0.1:18503/health
  sy_ratio=$(run switchyard 18502 "$stream")
  sy_entries=$(curl -s http://127.0.0.1:18503/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["cache"]["entries"])')
  kill "$SY"; wait "$SY" 2>/dev/null || true

  rm -rf "$WORK/nginx-cache"; mkdir -p "$WORK/nginx-cache"
  cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/logs/nginx.log warn;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 10000000;
  upstream origin { server 127.0.0.1:18501; keepalive 16; }
  # The cache manager keeps max_size closely (by default it lags a fast fill by far).
  proxy_cache_path $WORK/nginx-cache levels=1:2 keys_zone=c:16m max_size=40m inactive=1h
                   manager_files=100000 manager_sleep=10ms manager_threshold=1000ms;
  server { listen 127.0.0.1:18504;
           location / { proxy_cache c; proxy_cache_valid 200 1h; proxy_pass http://origin;
                        proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
  nginx -c "$WORK/nginx.conf" -p "$WORK" &
  NG=$!
  PIDS+=($NG)
  wait_http http://127.0.0.1:18504/k/warm-up-check || true
  ng_ratio=$(run nginx 18504 "$stream")
  ng_entries=$(find "$WORK/nginx-cache" -type f | wc -l)
  kill "$NG"; wait "$NG" 2>/dev/null || true
  report+=("| $s | $sy_ratio | $sy_entries | $ng_ratio | $ng_entries |")
done

echo "Zipf key stream: $KEYS keys of 1 KiB, $N requests, room for about 10% of the keys."
echo
echo "| s | switchyard hit ratio | entries held | nginx proxy_cache hit ratio | entries held |"
echo "| ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${report[@]}"
