#!/usr/bin/env python3
"""Opens N keep-alive connections to host:port, sends one request on each, keeps them idle,
and prints the RSS (KiB) of process PID while they are open. Usage: host port n pid"""
import asyncio
import sys

from rss import rss_kib


async def main(host: str, port: int, n: int, pid: int) -> None:
    conns = []
    request = f"GET /small HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    for i in range(n):
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except Exception as e:  # out of ports or descriptors: report what we reached
            print(f"opened {i} of {n} connections: {e}", file=sys.stderr)
            break
        writer.write(request)
        conns.append((reader, writer))
        if len(conns) % 500 == 0:
            await asyncio.gather(*(drain(r) for r, _ in conns[-500:]))
    await asyncio.gather(*(drain(r) for r, _ in conns[-(len(conns) % 500 or 500):]))
    await asyncio.sleep(1)
    print(rss_kib(pid))
    for _, w in conns:
        w.close()


async def drain(reader: asyncio.StreamReader) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await asyncio.wait_for(reader.readexactly(length), 10)
    except Exception:
        pass


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
