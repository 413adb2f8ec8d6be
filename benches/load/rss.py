"""Resident memory of a process, for the load scripts."""


def rss_kib(pid: int) -> int:
    """VmRSS of process PID in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0
