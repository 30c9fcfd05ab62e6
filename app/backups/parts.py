"""The bundle format: its constants, its errors, and writing and reading parts.

A bundle is a directory ``<root>/<id>/`` (the id is the job's) holding ``manifest.json``,
``config.json`` (the container's inspect), ``rootfs.tar[.gz|.zst]`` (``docker export``) and
``volumes/<name>.tar[…]`` / ``binds/<n>.tar[…]`` (``docker cp`` of each mount). Parts are
written once, straight from the engine stream, each with its size and sha256.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

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


class _HashThread:
    """sha256 on its own thread, so hashing overlaps the file writes (both release the GIL)."""

    def __init__(self, queued: int = 8) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=queued)
        self._thread = threading.Thread(target=self._run, daemon=True, name="backup-sha256")
        self._thread.start()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self._hash.update(data)

    def update(self, data: bytes) -> None:
        self._queue.put(data)

    def hexdigest(self) -> str:
        self.close()
        return self._hash.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class PartWriter:
    """A part file written chunk by chunk: compressed, hashed and counted on the way."""

    def __init__(self, path: Path, compression: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.compression = compression
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed by finish/abort)
        self._hash = _HashThread()
        self.size = 0
        self.raw_size = 0
        self._compressor: Any = None
        if compression == "gzip":
            self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        elif compression == "zstd":
            import zstandard

            self._compressor = zstandard.ZstdCompressor(level=3).compressobj()

    def write(self, data: bytes) -> None:
        self.raw_size += len(data)
        self._emit(self._compressor.compress(data) if self._compressor else data)

    def _emit(self, data: bytes) -> None:
        if data:
            self._hash.update(data)
            self._file.write(data)
            self.size += len(data)

    def finish(self) -> dict[str, Any]:
        """Flush, fsync and close; the part's manifest entry (without its path)."""
        if self._compressor is not None:
            self._emit(self._compressor.flush())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return {"sha256": self._hash.hexdigest(), "size": self.size,
                "uncompressed_size": self.raw_size}

    def abort(self) -> None:
        self._hash.close()
        self._file.close()


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
