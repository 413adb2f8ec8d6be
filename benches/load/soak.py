#!/usr/bin/env python3
"""Chaos soak: keep-alive load through Switchyard while backends, Redis and the config churn.

Run through soak.sh (which builds the release binary), or directly:

    python3 benches/load/soak.py --bin target/release/switchyard --duration 2m

Starts, on 127.0.0.1 only: three origins (this file in `origin` mode, each a subprocess that
can be killed and restarted on its port), a `redis-server`, and Switchyard with active health
checks, retries, passive health and the Redis cache tier. Keep-alive clients send a mix of
cacheable GETs, uncacheable GETs and small POSTs at a bounded rate, while every 1.5 s, in turn:
the config is reloaded with one backend removed, then reloaded with it back; a backend is
killed and restarted on the same port a second later; redis-server is restarted; a prefix
purge runs; SIGHUP arrives.

Prints requests, failures by kind, p99, RSS and open fds of the proxy after warm-up and at the
end, and exits 1 when a request was lost, RSS grew more than 25% after warm-up, or the fd count
grew by more than 64. Lost: closed without a response, reset, timed out, or anything but a 200
for a request the proxy may send again. A 5xx for a POST with a body (its backend died with
it; Pingora and nginx do not resend those) is an answer, reported apart. Stops only the
processes it started. Python stdlib only.
"""

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "soak.test"
CHAOS_INTERVAL = 1.5
RESTART_AFTER = 1.0


# --- origin mode -------------------------------------------------------------------------


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = "origin"

    def log_message(self, *args):
        pass

    def _send(self, status, body, cache_control):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache_control)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self._send(200, b"ok", "no-store")
        elif self.path.startswith("/cache/"):
            self._send(200, (self.name + " " + self.path).encode() * 4, "max-age=2")
        else:
            self._send(200, (self.name + " " + self.path).encode(), "no-store")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self._send(200, b"got %d" % len(body), "no-store")


class OriginServer(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a connection the proxy closed: nothing to report


def run_origin(port, name):
    Origin.name = name
    OriginServer(("127.0.0.1", port), Origin).serve_forever()


# --- helpers -----------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=10.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def parse_duration(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text}")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) * scale


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


class Processes:
    """Every child this script started, stopped by pid at the end."""

    def __init__(self):
        self.children = []

    def start(self, args, **kw):
        proc = subprocess.Popen(args, **kw)
        self.children.append(proc)
        return proc

    def stop(self, proc, sig=signal.SIGTERM):
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self):
        for proc in self.children:
            self.stop(proc)


# --- the world ---------------------------------------------------------------------------


def config_yaml(listen, admin, backends, redis_port, threads):
    lines = [
        "server:",
        f'  listen: ["127.0.0.1:{listen}"]',
        f"  threads: {threads}",
        "  grace_period: 5s",
        "admin:",
        f'  listen: "127.0.0.1:{admin}"',
        "cache:",
        "  max_size: 64MiB",
        "  redis:",
        f'    url: "redis://127.0.0.1:{redis_port}/0"',
        "    key_prefix: 'soak:'",
        "upstreams:",
        "  pool:",
        "    strategy: round_robin",
        "    backends:",
    ]
    lines += [f"      - address: 127.0.0.1:{p}" for p in backends]
    lines += [
        "    health_check: { type: http, path: /health, interval: 500ms, timeout: 300ms,"
        " unhealthy_threshold: 2, healthy_threshold: 1 }",
        "    connect_timeout: 500ms",
        "    read_timeout: 5s",
        "    retries: 2",
        "    retry_on: [connect_failure, timeout]",
        "    passive_health: { consecutive_failures: 3, ejection_time: 2s }",
        "routes:",
        "  - match: { path_prefix: /cache/ }",
        "    upstream: pool",
        "    cache: { enabled: true }",
        "  - match: { path_prefix: / }",
        "    upstream: pool",
    ]
    return "\n".join(lines) + "\n"


class World:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.procs = Processes()
        self.origin_ports = [free_port() for _ in range(3)]
        self.origins = {}
        self.redis_port = free_port()
        self.redis = None
        self.listen = free_port()
        self.admin = free_port()
        self.config = os.path.join(work, "switchyard.yaml")
        self.log = open(os.path.join(work, "switchyard.log"), "wb")
        self.proxy = None

    def start_origin(self, port):
        self.origins[port] = self.procs.start(
            [sys.executable, os.path.abspath(__file__), "origin", str(port), f"o{port}"]
        )

    def start_redis(self):
        self.redis = self.procs.start(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.work],
            stdout=subprocess.DEVNULL,
        )

    def write_config(self, backends):
        text = config_yaml(self.listen, self.admin, backends, self.redis_port, self.args.threads)
        tmp = self.config + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config)

    def start(self):
        for port in self.origin_ports:
            self.start_origin(port)
        self.start_redis()
        for port in self.origin_ports + [self.redis_port]:
            if not wait_port(port):
                raise SystemExit(f"soak: nothing listens on {port}")
        self.write_config(self.origin_ports)
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        self.proxy = self.procs.start(
            [self.args.bin, "--config", self.config], stdout=self.log, stderr=self.log, env=env
        )
        if not wait_port(self.listen) or not wait_port(self.admin):
            raise SystemExit("soak: switchyard did not start; see its log")

    def admin_post(self, path, body=b""):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def metrics(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()


# --- load --------------------------------------------------------------------------------


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.failures = {}
        # 5xx answers to requests the proxy must not send twice (a POST with a body whose
        # backend died with it): answered, so not lost, but reported.
        self.answered_errors = {}
        self.examples = []
        self.latencies = []

    def ok(self, seconds):
        with self.lock:
            self.requests += 1
            self.latencies.append(seconds)

    def fail(self, kind, detail, lost=True):
        with self.lock:
            self.requests += 1
            if lost:
                self.failures[kind] = self.failures.get(kind, 0) + 1
            else:
                self.answered_errors[kind] = self.answered_errors.get(kind, 0) + 1
            if len(self.examples) < 20:
                self.examples.append(f"{time.strftime('%H:%M:%S')} {kind}: {detail}")


def client_loop(port, rate, stop, tally, seed):
    rng = random.Random(seed)
    conn = None
    interval = 1.0 / rate
    next_at = time.monotonic()
    while not stop.is_set():
        next_at += interval
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            next_at = time.monotonic()
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        roll = rng.random()
        headers = {"Host": HOST}
        if roll < 0.5:
            method, path, body = "GET", f"/cache/{rng.randrange(200)}", None
        elif roll < 0.8:
            method, path, body = "GET", f"/live/{rng.randrange(1_000_000)}", None
        else:
            method, path, body = "POST", "/submit", b"x" * rng.randrange(1, 512)
            headers["Content-Type"] = "application/octet-stream"
        started = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            elapsed = time.monotonic() - started
            if resp.status != 200:
                resendable = body is None
                kind = f"status {resp.status}" + ("" if resendable else " (POST with a body)")
                lost = resendable or resp.status < 500
                tally.fail(kind, f"{method} {path}: {data[:80]!r}", lost)
            elif body is not None and data != b"got %d" % len(body):
                tally.fail("bad body", f"{method} {path}: {data[:80]!r}")
            else:
                tally.ok(elapsed)
            if resp.will_close:
                conn.close()
                conn = None
        except http.client.RemoteDisconnected as e:
            tally.fail("closed without response", f"{method} {path}: {e}")
            conn.close()
            conn = None
        except BrokenPipeError as e:
            # The request could not even be written: the connection was already closed.
            tally.fail("closed without response", f"{method} {path}: {e!r}")
            conn.close()
            conn = None
        except ConnectionResetError as e:
            tally.fail("reset", f"{method} {path}: {e!r}")
            conn.close()
            conn = None
        except (socket.timeout, TimeoutError) as e:
            tally.fail("timeout", f"{method} {path}: {e!r}")
            conn.close()
            conn = None
        except (OSError, http.client.HTTPException) as e:
            tally.fail("other", f"{method} {path}: {e!r}")
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


# --- chaos -------------------------------------------------------------------------------


def chaos_loop(world, stop, events):
    step = 0
    removed = None
    ports = world.origin_ports
    while not stop.wait(CHAOS_INTERVAL):
        action = step % 6
        step += 1
        try:
            if action == 0:
                removed = ports[(step // 6) % len(ports)]
                world.write_config([p for p in ports if p != removed])
                status, _ = world.admin_post("/reload")
                events.append(("reload-remove", status))
            elif action == 1:
                world.write_config(ports)
                status, _ = world.admin_post("/reload")
                events.append(("reload-add", status))
            elif action == 2:
                port = ports[(step // 6 + 1) % len(ports)]
                world.procs.stop(world.origins[port], signal.SIGKILL)
                if stop.wait(RESTART_AFTER):
                    world.start_origin(port)
                    break
                world.start_origin(port)
                events.append(("kill-restart-backend", port))
            elif action == 3:
                world.procs.stop(world.redis, signal.SIGKILL)
                world.start_redis()
                events.append(("restart-redis", 0))
            elif action == 4:
                body = json.dumps({"prefix": f"{HOST}/cache/1"}).encode()
                status, _ = world.admin_post("/cache/purge", body)
                events.append(("purge-prefix", status))
            else:
                world.proxy.send_signal(signal.SIGHUP)
                events.append(("sighup", 0))
        except OSError as e:
            events.append(("chaos-error", repr(e)))


# --- main --------------------------------------------------------------------------------


def metric_sum(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "origin":
        run_origin(int(sys.argv[2]), sys.argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", required=True, help="the switchyard binary")
    p.add_argument("--duration", type=parse_duration, default=600.0, help="default 10m")
    p.add_argument("--warmup", type=parse_duration, default=None,
                   help="RSS and fd baseline after this long (default: 10%% of the run, 5-30 s)")
    p.add_argument("--clients", type=int, default=16, help="keep-alive client connections")
    p.add_argument("--rate", type=float, default=600.0, help="total requests per second")
    p.add_argument("--threads", type=int, default=2, help="server.threads of the proxy")
    p.add_argument("--max-rss-growth", type=float, default=0.25)
    p.add_argument("--max-fd-growth", type=int, default=64)
    p.add_argument("--keep", action="store_true", help="keep the work dir (config, proxy log)")
    args = p.parse_args()
    warmup = args.warmup if args.warmup is not None else min(30.0, max(5.0, args.duration / 10))

    work = tempfile.mkdtemp(prefix="switchyard-soak.")
    world = World(args, work)
    stop = threading.Event()
    tally = Tally()
    events = []
    try:
        world.start()
        pid = world.proxy.pid
        rss_start, fds_start = rss_kib(pid), fd_count(pid)
        per_client = args.rate / args.clients
        clients = [
            threading.Thread(target=client_loop,
                             args=(world.listen, per_client, stop, tally, i), daemon=True)
            for i in range(args.clients)
        ]
        for t in clients:
            t.start()
        chaos = threading.Thread(target=chaos_loop, args=(world, stop, events), daemon=True)
        chaos.start()
        began = time.monotonic()
        time.sleep(warmup)
        rss_warm, fds_warm = rss_kib(pid), fd_count(pid)
        while time.monotonic() - began < args.duration:
            if world.proxy.poll() is not None:
                print("soak: switchyard exited during the run", file=sys.stderr)
                break
            time.sleep(min(1.0, max(0.0, args.duration - (time.monotonic() - began))))
        stop.set()
        for t in clients:
            t.join(15)
        chaos.join(10)
        elapsed = time.monotonic() - began
        alive = world.proxy.poll() is None
        rss_end = rss_kib(pid) if alive else 0
        fds_end = fd_count(pid) if alive else 0
        metrics = world.metrics() if alive else ""
    finally:
        stop.set()
        world.procs.stop_all()
        world.log.close()

    with open(os.path.join(work, "switchyard.log"), "rb") as f:
        log = f.read().decode(errors="replace")
    races_logged = log.count("failed to acquire reusable stream")
    errors_logged = sum(1 for line in log.splitlines() if " ERROR " in line)
    lost = sum(tally.failures.values())
    p99 = percentile(tally.latencies, 0.99) * 1000
    kinds = {e[0] for e in events}

    print(f"duration      {elapsed:.0f} s, {args.clients} keep-alive clients at {args.rate:.0f} rps,"
          f" threads {args.threads}, chaos steps {len(events)} ({', '.join(sorted(kinds))})")
    print(f"requests      {tally.requests} ({tally.requests / max(elapsed, 1):.0f}/s)")
    print(f"lost          {lost}" + "".join(f"\n  {k:<28}{v}" for k, v in sorted(tally.failures.items())))
    answered = sum(tally.answered_errors.values())
    print(f"not resent    {answered}" + "".join(
        f"\n  {k:<28}{v}" for k, v in sorted(tally.answered_errors.items())))
    for line in tally.examples:
        print(f"  e.g. {line}")
    print(f"p99           {p99:.1f} ms")
    print(f"RSS           start {rss_start / 1024:.1f} MiB, after warm-up {rss_warm / 1024:.1f} MiB,"
          f" end {rss_end / 1024:.1f} MiB")
    print(f"open fds      start {fds_start}, after warm-up {fds_warm}, end {fds_end}")
    if metrics:
        reused = metric_sum(metrics, "switchyard_upstream_connects_total", reused="true")
        fresh = metric_sum(metrics, "switchyard_upstream_connects_total", reused="false")
        races = metric_sum(metrics, "switchyard_upstream_pool_acquire_races_total")
        if reused or fresh:
            print(f"upstream      {reused:.0f} reused, {fresh:.0f} new connections,"
                  f" {races:.0f} pool acquire races")
    print(f"proxy log     {errors_logged} ERROR lines, {races_logged} 'failed to acquire reusable stream'")
    bad = []
    if not alive:
        bad.append("switchyard died")
    if lost:
        bad.append(f"{lost} requests lost")
    if rss_warm and rss_end > rss_warm * (1 + args.max_rss_growth):
        bad.append(f"RSS grew {100 * (rss_end / rss_warm - 1):.0f}% after warm-up")
    if fds_end - fds_warm > args.max_fd_growth:
        bad.append(f"open fds grew by {fds_end - fds_warm}")
    if args.keep or bad:
        print(f"work dir      {work} (config, switchyard.log)")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if bad:
        print("soak: FAIL: " + "; ".join(bad))
        return 1
    print("soak: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
