#!/usr/bin/env python3
"""Requests N distinct cacheable URLs (PREFIX0, PREFIX1, ...) over one keep-alive connection,
then prints the cache's accounted bytes and entries (from the admin /stats) and the RSS (KiB)
of process PID. Usage: host port admin_port pid n prefix"""
import http.client
import json
import sys

from rss import rss_kib


def main(host: str, port: int, admin: int, pid: int, n: int, prefix: str) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    for i in range(n):
        conn.request("GET", f"{prefix}{i}")
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            sys.exit(f"{prefix}{i}: status {resp.status}")
    stats = http.client.HTTPConnection(host, admin, timeout=10)
    stats.request("GET", "/stats")
    cache = json.loads(stats.getresponse().read())["cache"]
    print(cache["bytes"], cache["entries"], rss_kib(pid))


if __name__ == "__main__":
    host, port, admin, pid, n, prefix = sys.argv[1:7]
    main(host, int(port), int(admin), int(pid), int(n), prefix)
