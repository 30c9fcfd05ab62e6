"""An engine GET streamed into a pool of large buffers: a backup's export and archive streams.

The engine sends ``docker export`` (and ``GET …/archive``) with HTTP/1.1 chunked framing in
32 KiB chunks. urllib3 un-chunks in Python with small reads, and reading the buffered socket
chunk by chunk still costs a few Python calls and a bytes object per 32 KiB. On socket
transports (unix, tcp, TLS) the body is read here straight from the socket in 256 KiB
``recv_into`` calls and its framing parsed in place; the payload is copied once into a 1 MiB
buffer of a ``BufferPool``, which is handed to the caller and comes back to the pool when the
caller is done with it (so memory stays flat whatever the stream's size). Other transports
(ssh) go through ``_dechunk`` on the buffered body.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker

from app.backups.parts import CHUNK_BYTES, BackupStalledError, BufferPool

logger = logging.getLogger(__name__)

_RAW_BYTES = 256 << 10  # one recv_into; the engine's 32 KiB chunks and their framing
_LINE_MAX = 4096  # a chunk-size line (with extensions) or a trailer line


class StallWatchdog:
    """Calls ``abort`` when ``fed()`` has not been called for ``seconds``.

    docker-py turns the socket timeout off for export streams, so without this a silent
    engine would block the job until its hard time limit.
    """

    def __init__(self, seconds: float, abort: Callable[[], None]) -> None:
        self.seconds = seconds
        self.abort = abort
        self.fired = False
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="backup-watchdog")

    def __enter__(self) -> StallWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def fed(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.seconds / 4)):
            if time.monotonic() - self._last > self.seconds:
                self.fired = True
                try:
                    self.abort()
                except Exception:
                    logger.warning("could not abort a stalled stream", exc_info=True)
                return


def engine_stream(client: docker.DockerClient, path: str, params: dict[str, Any] | None,
                  stall: float, what: str, pool: BufferPool | None = None
                  ) -> Iterator[Any]:
    """A raw engine GET streamed in pieces of up to 1 MiB; a ``stall``-second silence raises
    BackupStalledError.

    With a ``pool``, each piece is a view of one of its buffers: the caller owns it until it
    calls ``pool.give(piece)``, and the stream waits for a free buffer when all are taken.
    Without one, each piece is a ``bytes`` copy the caller keeps.
    """
    if pool is None:
        own = BufferPool(2)
        for piece in engine_stream(client, path, params, stall, what, own):
            data = bytes(piece)
            own.give(piece)
            yield data
        return
    api = client.api
    response = api._get(api._url(path), params=params, stream=True)
    try:
        api._raise_for_status(response)
        raw_socket = api._get_raw_response_socket(response)
        api._disable_socket_timeout(raw_socket)

        def abort() -> None:
            try:
                raw_socket.shutdown(socket.SHUT_RDWR)
            finally:
                response.close()

        with StallWatchdog(stall, abort) as watchdog:
            try:
                for piece in _pieces(response, pool, watchdog.fed):
                    watchdog.fed()
                    yield piece
            except Exception:
                if not watchdog.fired:
                    raise
            if watchdog.fired:
                raise BackupStalledError(f"the engine sent nothing for {stall:g}s while streaming "
                                         f"{what}; the backup was abandoned")
    finally:
        response.close()


def _pieces(response: Any, pool: BufferPool, fed: Callable[[], None]) -> Iterator[memoryview]:
    http_response = getattr(response.raw, "_fp", None)
    body = getattr(http_response, "fp", None)
    if not getattr(http_response, "chunked", False) or body is None:
        return pool.wrap(iter(lambda: response.raw.read(CHUNK_BYTES), b""))
    if isinstance(body, io.BufferedReader) and isinstance(body.raw, socket.SocketIO):
        # What the buffered reader already holds first (read1 returns only that when it
        # holds anything), then the socket itself.
        return decode_chunked(body.raw.readinto, pool, body.read1(1 << 20), fed)
    return pool.wrap(_dechunk(body))


def decode_chunked(readinto: Callable[[memoryview], int | None], pool: BufferPool,
                   start: bytes = b"", fed: Callable[[], None] = lambda: None
                   ) -> Iterator[memoryview]:
    """HTTP/1.1 chunked decoding from ``readinto`` (a socket's), into ``pool``'s buffers.

    ``start`` is what was read before; ``fed`` is called after every read. Each yielded view
    is full (``pool.size`` bytes) but the last.

    Raises:
        ConnectionError: the stream ended before its last chunk, or its framing is malformed.
    """
    raw = bytearray(max(_RAW_BYTES, len(start) + _LINE_MAX))
    view = memoryview(raw)
    end = len(start)
    raw[:end] = start
    pos = 0
    need = -1  # > 0: payload bytes left in this chunk; -1: a size line; -2: its CRLF; -3: trailers
    out = memoryview(pool.take())
    filled = 0
    try:
        while True:
            while pos < end:
                if need > 0:
                    take = min(need, end - pos, len(out) - filled)
                    out[filled:filled + take] = view[pos:pos + take]
                    filled += take
                    pos += take
                    need -= take
                    if filled == len(out):
                        full, out, filled = out, None, 0
                        yield full
                        out = memoryview(pool.take())
                    if not need:
                        need = -2
                    continue
                if need == -2:
                    if end - pos < 2:
                        break
                    if raw[pos:pos + 2] != b"\r\n":
                        raise ConnectionError("the engine's chunked stream is malformed")
                    pos += 2
                    need = -1
                    continue
                newline = raw.find(b"\n", pos, end)
                if newline < 0:
                    break
                line = bytes(raw[pos:newline]).rstrip(b"\r")
                pos = newline + 1
                if need == -3:
                    if not line:  # the blank line after the trailers: the end
                        last, out = out, None
                        if filled:
                            yield last[:filled]
                        else:
                            pool.give(last)
                        return
                    continue
                try:
                    need = int(line.split(b";", 1)[0].strip() or b"0", 16)
                except ValueError:
                    raise ConnectionError("the engine's chunked stream is malformed") from None
                if need < 0:
                    raise ConnectionError("the engine's chunked stream is malformed")
                if need == 0:
                    need = -3
            if pos:
                raw[:end - pos] = view[pos:end]
                end -= pos
                pos = 0
            if end == len(raw):
                raise ConnectionError("the engine's chunked stream is malformed")
            got = readinto(view[end:])
            fed()
            if not got:
                raise ConnectionError("the engine closed the stream before its end")
            end += got
    finally:
        if out is not None:
            pool.give(out)


def _dechunk(body: Any) -> Iterator[bytes]:
    """HTTP/1.1 chunked decoding from a buffered body, coalesced to ~1 MiB pieces.

    Raises:
        ConnectionError: the stream ended before its last chunk (truncated, or aborted).
    """
    pending: list[bytes] = []
    buffered = 0
    while True:
        line = body.readline(1024)
        if not line:
            raise ConnectionError("the engine closed the stream before its end")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while body.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            break
        data = body.read(size)
        if len(data) < size or body.read(2) != b"\r\n":
            raise ConnectionError("the engine closed the stream mid-chunk")
        pending.append(data)
        buffered += size
        if buffered >= CHUNK_BYTES:
            yield b"".join(pending)
            pending, buffered = [], 0
    if pending:
        yield b"".join(pending)
