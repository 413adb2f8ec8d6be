#!/usr/bin/env python3
"""Turns the wrk outputs collected by compare.sh into a markdown table (medians)."""
import re
import statistics
import sys
from collections import defaultdict


def micros(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]


def parse(out: str):
    lines = out.split("~")
    rps = next((float(l.split()[1]) for l in lines if l.startswith("Requests/sec")), 0.0)
    lat = {}
    for l in lines:
        m = re.match(r"\s+(50|99)(?:\.000)?%\s+(\S+)", l)
        if m:
            lat[m.group(1)] = micros(m.group(2))
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    share = next((float(l.split(":")[1]) for l in lines if l.startswith("Proxy CPU share")), 0.0)
    return rps, lat.get("50", float("nan")), lat.get("99", float("nan")), errors, share


def fmt_lat(us: float) -> str:
    if us != us:  # h2load reports no percentiles
        return ""
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def main() -> None:
    results, low, idle_rss, keepalive_rss, reps, duration = sys.argv[1:7]
    cells = defaultdict(list)
    order = []
    for row in open(results):
        name, path, group, rss, out = row.rstrip("\n").split("\t", 4)
        key = (group, path, name)
        if key not in cells:
            order.append(key)
        cells[key].append((parse(out), rss))

    med = {}
    for key, runs in cells.items():
        rps = statistics.median(r[0][0] for r in runs)
        p50 = statistics.median(r[0][1] for r in runs)
        p99 = statistics.median(r[0][2] for r in runs)
        errors = sum(r[0][3] for r in runs)
        rss = runs[-1][1]
        # rps per proxy core: each run's rps over the share of a core the contender used.
        per_core = [r[0][0] / r[0][4] for r in runs if r[0][4] > 0]
        med[key] = (rps, p50, p99, errors, rss, statistics.median(per_core) if per_core else 0.0)

    reference = {
        "pass": "nginx proxy_pass",
        "cache": "nginx proxy_cache",
        "gzip": "nginx gzip 6",
        "https": "nginx https",
        "https-cache": "nginx https cache",
        "handshake": "nginx new TLS connections",
        "h2": "nginx h2 cache",
    }
    print(f"Medians of {reps} interleaved runs of `wrk -t1 -c50 -d{duration} --latency` per cell "
          f"(`h2`: `h2load -t1 -c50 -m10`; `handshake`: a new TLS connection per request).\n")
    print("| group | path | contender | rps | rps per proxy core | p50 | p99 | RSS | vs nginx | per core vs nginx | vs direct |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key in order:
        group, path, name = key
        rps, p50, p99, errors, rss, per_core = med[key]
        ref = med.get((group, path, reference.get(group, "")))
        direct = med.get(("pass", path, "direct (origin)"))
        vs_nginx = f"{rps / ref[0]:.2f}×" if ref and ref[0] else ""
        core_vs = f"{per_core / ref[5]:.2f}×" if ref and ref[5] and per_core else ""
        core_text = f"{per_core:,.0f}" if per_core else ""
        vs_direct = f"{rps / direct[0]:.2f}×" if direct and direct[0] else ""
        rss_text = f"{int(rss) / 1024:.1f} MiB" if rss else ""
        err = f" ({errors} non-2xx)" if errors else ""
        print(f"| {group} | {path} | {name} | {rps:,.0f}{err} | {core_text} | {fmt_lat(p50)} | {fmt_lat(p99)} | {rss_text} | {vs_nginx} | {core_vs} | {vs_direct} |")

    if int(idle_rss):
        print(f"\nSwitchyard RSS: idle {int(idle_rss) / 1024:.1f} MiB; with 10,000 idle keep-alive "
              f"connections {int(keepalive_rss) / 1024:.1f} MiB.")
    p50s = defaultdict(list)
    for row in open(low):
        name, out = row.rstrip("\n").split("\t", 1)
        p50s[name].append(parse(out)[1])
    if not p50s:
        return
    direct = statistics.median(p50s["direct"])
    through = statistics.median(p50s["switchyard"])
    nginx = statistics.median(p50s["nginx"])
    print(f"\nLow load (`wrk -c1`, /small, all on one core): p50 direct {fmt_lat(direct)}; "
          f"through Switchyard {fmt_lat(through)} (added {through - direct:.0f} µs); "
          f"through nginx {fmt_lat(nginx)} (added {nginx - direct:.0f} µs).")


if __name__ == "__main__":
    main()
