"""The bundle format: its constants, its errors, and writing and reading parts.

A bundle is a directory ``<root>/<id>/`` (the id is the job's) holding ``manifest.json``,
``config.json`` (the container's inspect), ``rootfs.tar[.gz|.zst]`` (``docker export``) and
``volumes/<name>.tar[…]`` / ``binds/<n>.tar[…]`` (``docker cp`` of each mount). Parts are
written once, straight from the engine stream, each with its size and sha256.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import queue
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from app.core.errors import DockyardError

COMPRESSIONS = ("none", "gzip", "zstd")
CONSISTENCIES = ("none", "pause", "stop")
SUFFIXES = {"none": ".tar", "gzip": ".tar.gz", "zstd": ".tar.zst"}
MANIFEST = "manifest.json"
FORMAT = 1
CHUNK_BYTES = 1 << 20


class BackupCorruptError(DockyardError):
    """A stored part does not match the checksum its manifest recorded."""

    status, slug, title = 422, "backup-corrupt", "The backup is corrupt"


class BackupStalledError(DockyardError):
    """The engine stopped sending an export or archive stream."""

    status, slug, title = 504, "backup-stalled", "The engine stream stalled"


def part_name(stem: str, compression: str) -> str:
    return stem + SUFFIXES[compression]


# -- writing and reading parts ---------------------------------------------------------------


class BufferPool:
    """``count`` buffers of ``size`` bytes, taken and given back: a stream's memory stays flat.

    ``take`` waits for a free buffer; ``give`` takes the buffer back from any view of it
    (pieces of other origin, e.g. from ``wrap``, are simply dropped).
    """

    def __init__(self, count: int, size: int = CHUNK_BYTES) -> None:
        self.count, self.size = count, size
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._mine: set[int] = set()
        for _ in range(count):
            buffer = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT writes want
            self._mine.add(id(buffer))
            self._free.put(buffer)

    @property
    def available(self) -> int:
        return self._free.qsize()

    def take(self) -> mmap.mmap:
        return self._free.get()

    def give(self, piece: Any) -> None:
        owner = piece.obj if isinstance(piece, memoryview) else piece
        if id(owner) in self._mine:
            self._free.put(owner)

    @staticmethod
    def wrap(chunks: Iterator[bytes]) -> Iterator[memoryview]:
        """Pieces that belong to no pool, as views like the pool's."""
        for chunk in chunks:
            yield memoryview(chunk)


Done = Callable[[], None] | None


class _HashThread:
    """sha256 on its own thread, so hashing overlaps the file writes (both release the GIL)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[tuple[Any, Done] | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, daemon=True, name="backup-sha256")
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            data, done = item
            self._hash.update(data)
            if done is not None:
                done()

    def update(self, data: Any, done: Done = None) -> None:
        """Hash ``data`` (bytes or a view), then call ``done``: until then it must not change."""
        self._queue.put((data, done))

    def hexdigest(self) -> str:
        self.close()
        return self._hash.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class PartWriter:
    """A part file written chunk by chunk: compressed, hashed and counted on the way."""

    def __init__(self, path: Path, compression: str, direct: bool = False) -> None:
        """``direct``: write with O_DIRECT where the file system takes it (see ``_open``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.compression = compression
        self._fd, self._direct = _open(path, direct)
        self._hash = _HashThread()
        self.size = 0
        self.raw_size = 0
        self._compressor: Any = None
        if compression == "gzip":
            self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        elif compression == "zstd":
            import zstandard

            self._compressor = zstandard.ZstdCompressor(level=3).compressobj()

    def write(self, data: Any, done: Done = None) -> None:
        """Write ``data`` (bytes or a view); ``done`` is called exactly once, when nothing
        reads ``data`` any more (it is hashed on another thread: that can be after this
        returns) or when this raises."""
        self.raw_size += len(data)
        if self._compressor is None:
            self._emit(data, done)
            return
        try:
            compressed = self._compressor.compress(data)
        finally:
            if done is not None:
                done()
        self._emit(compressed)

    def _emit(self, data: Any, done: Done = None) -> None:
        """Write and hash ``data``; ``done`` is called exactly once, raise or not."""
        view = memoryview(data)
        try:
            written = 0
            while written < len(view):
                try:
                    written += os.write(self._fd, view[written:])
                except OSError as exc:
                    if not (self._direct and exc.errno == errno.EINVAL):
                        raise
                    self._buffered()  # a piece O_DIRECT refuses (its size or address)
        except BaseException:
            if done is not None:
                done()
            raise
        if not view:
            if done is not None:
                done()
            return
        self.size += len(view)
        self._hash.update(data, done)

    def finish(self, durable: bool = True) -> dict[str, Any]:
        """Flush, close and (``durable``) fsync; the part's manifest entry (without its path).

        Without ``durable`` the caller fsyncs the file before relying on it (a bundle's
        publish does, while it hashes the download).
        """
        if self._compressor is not None:
            self._emit(self._compressor.flush())
        if durable:
            os.fsync(self._fd)
        self._close()
        return {"sha256": self._hash.hexdigest(), "size": self.size,
                "uncompressed_size": self.raw_size}

    def abort(self) -> None:
        self._hash.close()
        self._close()

    def _buffered(self) -> None:
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self._direct = False

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _open(path: Path, direct: bool) -> tuple[int, bool]:
    """A new file for writing; with O_DIRECT when asked and the file system takes it.

    O_DIRECT writes go from the stream's buffers to the disk without the page cache: on
    a VM, filling a GiB of fresh page cache costs 1-3 s of system CPU (docs/benchmarks.md)
    and the fsync at the end has nothing left to write. Pieces O_DIRECT refuses (not a
    multiple of the block size, as a stream's last one may be) are written through the page
    cache from then on.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o666), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # tmpfs and a few others refuse O_DIRECT
                raise
    return os.open(path, flags, 0o666), False


def read_part(path: Path, compression: str) -> Iterator[bytes]:
    """A part's tar bytes, decompressed on the way, one chunk at a time."""
    decompressor: Any = None
    if compression == "gzip":
        decompressor = zlib.decompressobj(31)
    elif compression == "zstd":
        import zstandard

        decompressor = zstandard.ZstdDecompressor().decompressobj()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            out = decompressor.decompress(chunk) if decompressor else chunk
            if out:
                yield out
    if compression == "gzip":
        tail = decompressor.flush()
        if tail:
            yield tail


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
