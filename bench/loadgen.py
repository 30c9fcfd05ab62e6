"""A small HTTP/1.1 load generator on asyncio, for loopback targets only.

``open_loop`` sends requests on a fixed clock (request i is due at start + i/rate) and
measures each latency from the request's *scheduled* time, so a stalled server is charged
for the requests that queued behind the stall (no coordinated omission). Connections are
kept alive and pooled; a request that finds no idle connection waits for one, and that
wait is part of its latency. ``closed_loop`` runs N clients that each send the next
request when the previous answer arrived.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench.common import assert_loopback


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, accepted requests only
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    elapsed: float = 0.0
    send_lag: list[float] = field(default_factory=list)  # actual send - scheduled send

    @property
    def accepted(self) -> int:
        return len(self.latencies)


class _Target:
    def __init__(self, method: str, url: str, headers: dict[str, str]) -> None:
        assert_loopback(url)
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Content-Length: 0"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)


async def _exchange(target: _Target, conn: list) -> int:
    """Send one request on ``conn`` ([reader, writer], reconnected if needed); its status."""
    if conn[1] is None or conn[1].is_closing():
        conn[0], conn[1] = await target.connect()
    reader, writer = conn
    writer.write(target.request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value)
        elif lname == b"connection" and value.strip().lower() == b"close":
            close = True
    if length:
        await reader.readexactly(length)
    if close:
        writer.close()
        conn[1] = None
    return status


async def _open_loop(target: _Target, rate: float, duration: float, pool_size: int,
                     ok_status: int) -> LoadResult:
    result = LoadResult()
    idle: asyncio.Queue[list] = asyncio.Queue()
    for _ in range(pool_size):
        reader, writer = await target.connect()
        idle.put_nowait([reader, writer])
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task] = set()

    async def fire(scheduled: float) -> None:
        conn = await idle.get()
        result.send_lag.append(loop.time() - scheduled)
        try:
            status = await _exchange(target, conn)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
            if conn[1] is not None:
                conn[1].close()
            conn[1] = None
        else:
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == ok_status:
                result.latencies.append(loop.time() - scheduled)
        finally:
            idle.put_nowait(conn)

    total = int(rate * duration)
    start = loop.time() + 0.05
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(fire(scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    result.elapsed = loop.time() - start
    while not idle.empty():
        conn = idle.get_nowait()
        if conn[1] is not None:
            conn[1].close()
    return result


async def _closed_loop(target: _Target, clients: int, duration: float, ok_status: int) -> LoadResult:
    result = LoadResult()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration

    async def client() -> None:
        conn: list = [None, None]
        while loop.time() < deadline:
            sent = loop.time()
            try:
                status = await _exchange(target, conn)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                result.errors += 1
                conn[1] = None
                continue
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == ok_status:
                result.latencies.append(loop.time() - sent)
        if conn[1] is not None:
            conn[1].close()

    start = loop.time()
    await asyncio.gather(*(client() for _ in range(clients)))
    result.elapsed = loop.time() - start
    return result


def open_loop(method: str, url: str, headers: dict[str, str], rate: float, duration: float,
              pool_size: int = 64, ok_status: int = 202) -> LoadResult:
    target = _Target(method, url, headers)
    return asyncio.run(_open_loop(target, rate, duration, pool_size, ok_status))


def closed_loop(method: str, url: str, headers: dict[str, str], clients: int, duration: float,
                ok_status: int = 202) -> LoadResult:
    target = _Target(method, url, headers)
    return asyncio.run(_closed_loop(target, clients, duration, ok_status))

