#!/usr/bin/env bash
# Side-by-side load comparison of Switchyard with nginx, HAProxy and Varnish on this machine.
#
#   benches/load/compare.sh           three interleaved repetitions of 10 s per cell
#   benches/load/compare.sh --quick   one repetition of 5 s (smoke run)
#   ONLY=cache,h2 benches/load/compare.sh  some groups of the matrix (pass, cache, gzip,
#                                       https, https-cache, handshake, h2)
#
# The TLS groups use one ECDSA P-256 certificate made here with openssl, TLS 1.3 for both
# contenders: `https` and `https-cache` are keep-alive requests over TLS (pass-through and cache
# hits), `handshake` opens a new TLS connection per request (`Connection: close`), and `h2` is
# cache hits over HTTP/2 with h2load (50 connections, 10 streams each).
#
# Everything listens on 127.0.0.1 only; configs live in a temp dir; only the processes this
# script started are stopped (by pid). Each contender runs one worker process/thread, pinned to
# CPU 0; wrk and the two nginx origins are pinned to CPU 1 (on a 2-core machine they would
# otherwise steal the proxy's core). The table goes to stdout and to $OUT (default
# target/load-report.md).
set -euo pipefail

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
REPS=3; DURATION=10s; WARMUP=2s
if [ "$QUICK" = 1 ]; then REPS=1; DURATION=5s; WARMUP=1s; fi

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/target/load-report.md}
WORK=$(mktemp -d /tmp/switchyard-load.XXXXXX)
# Varnish drops privileges: its work files must be reachable by its own users.
chmod 755 "$WORK"
PIDS=()
PROXY_CPU=0
LOAD_CPU=1
[ "$(nproc)" -lt 2 ] && LOAD_CPU=0

cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  sleep 0.5
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- tools -------------------------------------------------------------------------------
need=()
for tool in nginx:nginx haproxy:haproxy varnishd:varnish wrk:wrk h2load:nghttp2-client openssl:openssl; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  # Keep the packages' own services from starting: this script starts what it needs.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "building switchyard (release)" >&2
(cd "$ROOT" && cargo build --release --quiet --bin switchyard)
SWITCHYARD=$ROOT/target/release/switchyard


# --- content -----------------------------------------------------------------------------
mkdir -p "$WORK/www" "$WORK/logs" "$WORK/nginx-cache"
python3 - "$WORK/www" <<'PY'
import json, random, sys
root = sys.argv[1]
item = {"id": 1, "title": "Assessment item", "choices": ["A", "B", "C", "D"], "weight": 0.5}
small = json.dumps({"items": [item] * 12})[:1024].ljust(1024)
open(f"{root}/small", "w").write(small)
# A page that compresses like real HTML (about 4:1 with gzip), not like a repeated line.
rng = random.Random(7)
letters = "etaoinshrdlucmfwypvbgkjqxz"
vocab = ["".join(rng.choice(letters[: rng.randint(8, 26)]) for _ in range(rng.randint(2, 11)))
         for _ in range(3000)]
parts, i = ["<!doctype html><html><head><title>Assessment</title></head><body>"], 0
while sum(map(len, parts)) < 102400:
    words = " ".join(rng.choice(vocab) for _ in range(rng.randint(20, 60)))
    choices = "".join(
        f'<li class="choice"><label><input type="radio" name="q{i}" value="{c}"> {rng.choice(vocab)} {rng.choice(vocab)}</label></li>'
        for c in "abcd")
    parts.append(f'<section class="question" id="q{i}" data-score="{rng.randint(0, 99999)}"><h2 class="question-title">{rng.choice(vocab).title()} {i}</h2><p class="question-text">{words}.</p><ul class="choices">{choices}</ul></section>\n')
    i += 1
open(f"{root}/page", "w").write("".join(parts)[:102400])
PY

# --- a certificate for the TLS groups ---------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$WORK/tls.key" -out "$WORK/tls.pem" 2>/dev/null

# --- origins: two nginx, one worker each ---------------------------------------------------
for port in 18001 18002; do
  cat > "$WORK/origin-$port.conf" <<CONF
worker_processes 1;
pid $WORK/origin-$port.pid;
error_log $WORK/logs/origin-$port.log warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port;
    root $WORK/www;
    location = /small { default_type application/json; add_header Cache-Control "max-age=60"; }
    location = /page { default_type text/html; add_header Cache-Control "max-age=60"; }
    location /fill/ { default_type application/json; add_header Cache-Control "max-age=600"; try_files /small =404; }
  }
}
CONF
  taskset -c $LOAD_CPU nginx -c "$WORK/origin-$port.conf" -p "$WORK" &
  PIDS+=($!)
done

# --- contenders ----------------------------------------------------------------------------
UPSTREAM="upstream origins { server 127.0.0.1:18001; server 127.0.0.1:18002; keepalive 64; }"
PROXY="proxy_pass http://origins; proxy_http_version 1.1; proxy_set_header Connection \"\";"
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/logs/nginx.log warn;
daemon off;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 1000000;
  $UPSTREAM
  proxy_cache_path $WORK/nginx-cache levels=1:2 keys_zone=c:10m max_size=256m inactive=10m;
  server { listen 127.0.0.1:18201; location / { $PROXY } }
  server { listen 127.0.0.1:18202; location / { proxy_cache c; proxy_cache_valid 200 60s; $PROXY } }
  ssl_certificate $WORK/tls.pem;
  ssl_certificate_key $WORK/tls.key;
  ssl_protocols TLSv1.3;
  server { listen 127.0.0.1:18211 ssl; location / { $PROXY } }
  server { listen 127.0.0.1:18212 ssl http2; location / { proxy_cache c; proxy_cache_valid 200 60s; $PROXY } }
  server { listen 127.0.0.1:18203; gzip on; gzip_comp_level 6; gzip_min_length 1024;
           gzip_types text/html application/json; location / { $PROXY } }
}
CONF

cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:18301
  default_backend be
backend be
  balance roundrobin
  server o1 127.0.0.1:18001
  server o2 127.0.0.1:18002
CONF

cat > "$WORK/default.vcl" <<'CONF'
vcl 4.1;
import directors;
backend o1 { .host = "127.0.0.1"; .port = "18001"; }
backend o2 { .host = "127.0.0.1"; .port = "18002"; }
sub vcl_init { new rr = directors.round_robin(); rr.add_backend(o1); rr.add_backend(o2); }
sub vcl_recv { set req.backend_hint = rr.backend(); }
CONF

switchyard_conf() { # name port admin threads route-extra [tls-port]
  local tls=""
  [ -n "${6:-}" ] && tls="tls: { listen: [\"127.0.0.1:$6\"], min_version: \"1.3\", certificates: [{ cert: $WORK/tls.pem, key: $WORK/tls.key }] }"
  cat > "$WORK/$1.yaml" <<CONF
server: { listen: ["127.0.0.1:$2"], threads: $4, grace_period: 1s }
$tls
admin: { listen: "127.0.0.1:$3" }
cache: { max_size: 256MiB }
upstreams:
  origins:
    strategy: round_robin
    backends: [{ address: "127.0.0.1:18001" }, { address: "127.0.0.1:18002" }]
routes:
  - upstream: origins
$5
CONF
}
switchyard_conf sy-pass 18101 19101 1 "" 18111
switchyard_conf sy-pass2 18102 19102 2 ""
switchyard_conf sy-cache 18103 19103 1 "    cache: { enabled: true }" 18113
switchyard_conf sy-cache-pingora 18106 19106 1 "    cache: { enabled: true }"
sed -i 's/cache: { max_size: 256MiB }/cache: { max_size: 256MiB, direct_hits: false }/' "$WORK/sy-cache-pingora.yaml"
switchyard_conf sy-fill 18105 19105 1 "    cache: { enabled: true }"
sed -i 's/max_size: 256MiB/max_size: 64MiB/' "$WORK/sy-fill.yaml"
switchyard_conf sy-gzip 18104 19104 1 "    cache: { enabled: true }
    compression: { algorithms: [gzip], level: { gzip: 6 }, types: [text/html, application/json] }"

declare -A PID_OF
start() { # name command...
  # taskset execs the command, so $! is the contender's own pid.
  taskset -c $PROXY_CPU "${@:2}" >"$WORK/logs/$1.out" 2>"$WORK/logs/$1.err" &
  PID_OF[$1]=$!
  PIDS+=($!)
}
start nginx nginx -c "$WORK/nginx.conf" -p "$WORK"
start haproxy haproxy -f "$WORK/haproxy.cfg" -db
start varnish varnishd -F -a 127.0.0.1:18401 -f "$WORK/default.vcl" -s malloc,256m -n "$WORK/varnish" -p thread_pools=1
start sy-pass "$SWITCHYARD" --config "$WORK/sy-pass.yaml"
start sy-pass2 taskset -c 0,1 "$SWITCHYARD" --config "$WORK/sy-pass2.yaml"
start sy-cache "$SWITCHYARD" --config "$WORK/sy-cache.yaml"
start sy-cache-pingora "$SWITCHYARD" --config "$WORK/sy-cache-pingora.yaml"
start sy-gzip "$SWITCHYARD" --config "$WORK/sy-gzip.yaml"
start sy-fill "$SWITCHYARD" --config "$WORK/sy-fill.yaml"

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open" >&2
  return 1
}
for port in 18001 18002 18101 18102 18103 18104 18105 18106 18111 18113 18201 18211 18212 18301 18401; do wait_port $port; done

# A contender's processes: the process, its children and theirs (nginx and HAProxy workers,
# Varnish's child).
family() {
  echo "$1" $(pgrep -P "$1" 2>/dev/null) $(for c in $(pgrep -P "$1" 2>/dev/null); do pgrep -P "$c"; done)
}

# The sum over a contender's processes of a field (`awk` program) of a /proc file.
family_sum() { # pid file awk-program
  local total=0 p
  for p in $(family "$1"); do
    total=$((total + $(awk "$3" "/proc/$p/$2" 2>/dev/null || echo 0)))
  done
  echo $total
}

# CPU time (clock ticks, user + system) of a contender. With the load generator on the other
# core, the share of a core a contender used gives the "rps per proxy core" column: rps ÷ that
# share, comparable between runs on machines that are busier or quieter.
cpu_ticks() { family_sum "$1" stat '{print $14 + $15}'; }

# RSS in KiB of a contender.
rss() { family_sum "$1" status '/VmRSS/ {print $2}'; }

# --- the matrix ------------------------------------------------------------------------------
# name|port|path|Accept-Encoding|group|process
CELLS=(
  "direct (origin)|18001|/small||pass|"
  "switchyard|18101|/small||pass|sy-pass"
  "switchyard 2 threads|18102|/small||pass|sy-pass2"
  "nginx proxy_pass|18201|/small||pass|nginx"
  "haproxy|18301|/small||pass|haproxy"
  "direct (origin)|18001|/page||pass|"
  "switchyard|18101|/page||pass|sy-pass"
  "nginx proxy_pass|18201|/page||pass|nginx"
  "haproxy|18301|/page||pass|haproxy"
  "switchyard cache|18103|/small||cache|sy-cache"
  "switchyard cache, no direct path|18106|/small||cache|sy-cache-pingora"
  "nginx proxy_cache|18202|/small||cache|nginx"
  "varnish|18401|/small||cache|varnish"
  "switchyard cache|18103|/page||cache|sy-cache"
  "switchyard cache, no direct path|18106|/page||cache|sy-cache-pingora"
  "nginx proxy_cache|18202|/page||cache|nginx"
  "varnish|18401|/page||cache|varnish"
  "switchyard gzip+cache|18104|/page|gzip|gzip|sy-gzip"
  "nginx gzip 6|18203|/page|gzip|gzip|nginx"
  "switchyard https|18111|/small||https|sy-pass"
  "nginx https|18211|/small||https|nginx"
  "switchyard https cache|18113|/small||https-cache|sy-cache"
  "nginx https cache|18212|/small||https-cache|nginx"
  "switchyard new TLS connections|18113|/small||handshake|sy-cache"
  "nginx new TLS connections|18212|/small||handshake|nginx"
  "switchyard h2 cache|18113|/small||h2|sy-cache"
  "nginx h2 cache|18212|/small||h2|nginx"
)

RESULTS=$WORK/results.tsv
: > "$RESULTS"
run_cell() { # cell rep
  IFS='|' read -r name port path encoding group proc <<<"$1"
  [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$group,"* ]] && return 0
  local url="http://127.0.0.1:$port$path"
  case "$group" in https*|handshake|h2) url="https://127.0.0.1:$port$path" ;; esac
  # nginx only recognises the header written with a space after the colon.
  local headers=()
  [ -n "$encoding" ] && headers=(-H "Accept-Encoding: $encoding")
  [ "$group" = handshake ] && headers=(-H "Connection: close")
  local out pid="" ticks_before=0 started
  [ -n "$proc" ] && pid=${PID_OF[$proc]:-}
  if [ "$group" = h2 ]; then
    local secs=${DURATION%s} warm=${WARMUP%s}
    timeout 30 taskset -c $LOAD_CPU h2load -t1 -c50 -m10 -D "$warm" "$url" >/dev/null 2>&1 || true
    [ -n "$pid" ] && ticks_before=$(cpu_ticks "$pid"); started=$(date +%s.%N)
    out=$(timeout 60 taskset -c $LOAD_CPU h2load -t1 -c50 -m10 -D "$secs" "$url" 2>&1 || true)
    # In wrk's words, for report.py: the rate, and the answers that were not 2xx.
    local rate bad
    rate=$(echo "$out" | awk '/^finished in/ {gsub(",", "", $4); print $4}')
    bad=$(echo "$out" | awk '/^status codes:/ {gsub(",", ""); print $5 + $7 + $9}')
    out="Requests/sec: ${rate:-0}"$'\n'"Non-2xx or 3xx responses: ${bad:-0}"$'\n'"$out"
  else
    timeout 30 taskset -c $LOAD_CPU wrk -t1 -c50 -d"$WARMUP" "${headers[@]}" "$url" >/dev/null 2>&1 || true
    [ -n "$pid" ] && ticks_before=$(cpu_ticks "$pid"); started=$(date +%s.%N)
    out=$(timeout 60 taskset -c $LOAD_CPU wrk -t1 -c50 -d"$DURATION" --latency "${headers[@]}" "$url" 2>&1 || true)
  fi
  if [ -n "$pid" ]; then
    local ticks hz
    ticks=$(( $(cpu_ticks "$pid") - ticks_before )); hz=$(getconf CLK_TCK)
    # The share of one core the contender used while the load ran.
    out="$out"$'\n'"Proxy CPU share: $(python3 -c "import time; print(f'{$ticks / $hz / (time.time() - $started):.3f}')")"
  fi
  local rss_kib=""
  [ -n "$proc" ] && [ -n "${PID_OF[$proc]:-}" ] && rss_kib=$(rss "${PID_OF[$proc]}")
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$path" "$group" "$rss_kib" "$(echo "$out" | tr '\n' '~')" >> "$RESULTS"
  echo "  $name $path: $(echo "$out" | awk '/Requests\/sec/ {print $2}') rps" >&2
}
for rep in $(seq 1 "$REPS"); do
  echo "repetition $rep/$REPS" >&2
  for cell in "${CELLS[@]}"; do run_cell "$cell" "$rep"; done
done

# Overhead at low load: wrk -c1 direct, through Switchyard and through nginx. Everything of
# one measurement runs on one core: on this VM waking an idle core costs ~40 µs per hop, which
# would otherwise dominate (and is the same for every proxy).
LOW=$WORK/low.tsv
: > "$LOW"
IDLE_RSS=0
KEEPALIVE_RSS=0
if [ -z "${ONLY:-}" ]; then
move() { for pid in "$@"; do taskset -a -p -c "$LOAD_CPU" "$pid" >/dev/null; done; }
back() { for pid in "$@"; do taskset -a -p -c "$PROXY_CPU" "$pid" >/dev/null; done; }
NGINX_PIDS=$(echo "${PID_OF[nginx]}" $(pgrep -P "${PID_OF[nginx]}"))
move "${PID_OF[sy-pass]}" $NGINX_PIDS
for rep in $(seq 1 "$REPS"); do
  for target in "direct|18001" "switchyard|18101" "nginx|18201"; do
    IFS='|' read -r name port <<<"$target"
    out=$(timeout 60 taskset -c $LOAD_CPU wrk -t1 -c1 -d"$DURATION" --latency "http://127.0.0.1:$port/small" 2>&1 || true)
    printf '%s\t%s\n' "$name" "$(echo "$out" | tr '\n' '~')" >> "$LOW"
  done
done
back "${PID_OF[sy-pass]}" $NGINX_PIDS

# Memory: Switchyard idle, and with 10,000 idle keep-alive connections.
IDLE_RSS=$(rss "${PID_OF[sy-pass]}")
KEEPALIVE_RSS=$(python3 "$ROOT/benches/load/idle_connections.py" 127.0.0.1 18101 10000 "${PID_OF[sy-pass]}")

# Memory: a 64 MiB cache filled three times over with 1 KiB responses (the worst case for
# per-entry overhead): what the cache accounts against what the process really grew by.
FILL_IDLE=$(rss "${PID_OF[sy-fill]}")
read -r FILL_BYTES FILL_ENTRIES FILL_RSS < <(timeout 300 python3 "$ROOT/benches/load/cache_fill.py" \
  127.0.0.1 18105 19105 "${PID_OF[sy-fill]}" 60000 /fill/)
fi

python3 "$ROOT/benches/load/report.py" "$RESULTS" "$LOW" "$IDLE_RSS" "$KEEPALIVE_RSS" "$REPS" "$DURATION" | tee "$OUT"
if [ -n "${FILL_RSS:-}" ]; then
  awk -v b="$FILL_BYTES" -v e="$FILL_ENTRIES" -v idle="$FILL_IDLE" -v rss="$FILL_RSS" 'BEGIN {
    printf "\nCache full (`max_size: 64MiB`, 60,000 distinct 1 KiB responses): %d entries accounted at %.1f MiB; the process grew from %.1f to %.1f MiB (+%.1f MiB, %.2f× the accounted bytes).\n",
      e, b / 1048576, idle / 1024, rss / 1024, (rss - idle) / 1024, (rss - idle) * 1024 / b }' | tee -a "$OUT"
fi
echo "report written to $OUT" >&2
