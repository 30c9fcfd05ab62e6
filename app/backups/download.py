"""The download: a deterministic tar of a bundle, built on the fly, and ``Range`` parsing.

Headers carry fixed owner, mode and the backup's creation time, so the same bundle always
gives the same bytes (and any ``Range`` of them) without storing the data twice.
"""

from __future__ import annotations

import base64
import calendar
import errno
import hashlib
import mmap
import os
import queue
import re
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from app.backups.parts import CHUNK_BYTES, MANIFEST, BackupCorruptError


@dataclass(frozen=True)
class _Segment:
    length: int
    data: bytes | None = None
    path: Path | None = None


class BundleArchive:
    """The bundle as one tar stream: ``<id>/manifest.json`` first, then every part.

    Headers carry fixed owner, mode and the backup's creation time, so the same bundle
    always gives the same bytes and a ``Range`` can be served without building the tar.
    """

    def __init__(self, manifest: dict[str, Any], paths: list[Path]) -> None:
        """``paths``: the manifest's file, then each part's, in the manifest's order.

        ``etag`` is the download's sha256 once it was recorded (``content_sha256``), else
        the manifest's: either way it changes exactly when the bytes do (a strong ETag).
        """
        self.manifest = manifest
        mtime = _epoch(manifest["created_at"])
        segments: list[_Segment] = []
        relatives = [MANIFEST, *(p["path"] for p in manifest["parts"])]
        for relative, path in zip(relatives, paths, strict=True):
            size = path.stat().st_size
            info = tarfile.TarInfo(f"{manifest['id']}/{relative}")
            info.size, info.mtime, info.mode = size, mtime, 0o644
            info.uname = info.gname = "root"
            header = info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")
            segments.append(_Segment(len(header), data=header))
            segments.append(_Segment(size, path=path))
            if size % tarfile.BLOCKSIZE:
                padding = tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE
                segments.append(_Segment(padding, data=bytes(padding)))
        segments.append(_Segment(2 * tarfile.BLOCKSIZE, data=bytes(2 * tarfile.BLOCKSIZE)))
        self._segments = segments
        self.size = sum(s.length for s in segments)
        self.sha256: str | None = manifest.get("content_sha256")
        self.etag = self.sha256 or hashlib.sha256(paths[0].read_bytes()).hexdigest()

    def digest(self) -> dict[str, Any]:
        """``{sha256, size}`` of the whole download, read once from the parts."""
        hasher = hashlib.sha256()
        for segment in self._segments:
            if segment.data is not None:
                hasher.update(segment.data)
            else:
                assert segment.path is not None
                _hash_file(hasher, segment.path, segment.length)
        return {"sha256": hasher.hexdigest(), "size": self.size}

    def read(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` inclusive (default: to the last), in chunks from disk."""
        end = self.size - 1 if end is None else end
        offset = 0
        for segment in self._segments:
            seg_start, seg_end = offset, offset + segment.length - 1
            offset += segment.length
            if seg_end < start or seg_start > end:
                continue
            lo, hi = max(start, seg_start) - seg_start, min(end, seg_end) - seg_start
            if segment.data is not None:
                yield segment.data[lo:hi + 1]
                continue
            assert segment.path is not None
            with open(segment.path, "rb") as handle:
                handle.seek(lo)
                remaining = hi - lo + 1
                while remaining > 0:
                    chunk = handle.read(min(CHUNK_BYTES, remaining))
                    if not chunk:
                        raise BackupCorruptError(f"part '{segment.path.name}' shrank while read")
                    remaining -= len(chunk)
                    yield chunk


_HASH_VIEW = 8 << 20
_DIRECT_MIN = 64 << 20  # parts this big are read with O_DIRECT (see _hash_direct)
_DIRECT_READ = 4 << 20


def _hash_file(hasher: Any, path: Path, length: int) -> None:
    """Feed the first ``length`` bytes of ``path`` to ``hasher``.

    A big part is read from the disk with O_DIRECT (``_hash_direct``); others through a
    read-only mmap, in 8 MiB views: the bytes are hashed where they lie in the page cache (no
    copy into Python objects), and hashlib releases the GIL on each view. Where the file
    cannot be mapped, it is read in 1 MiB chunks.

    Raises:
        BackupCorruptError: the file is shorter than ``length``.
    """
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size < length:
            raise BackupCorruptError(f"part '{path.name}' shrank while read")
        if not length:
            return
        if length >= _DIRECT_MIN and _hash_direct(hasher, path, length):
            return
        try:
            mapped = mmap.mmap(handle.fileno(), length, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            mapped = None
        if mapped is None:
            remaining = length
            while remaining > 0:
                chunk = handle.read(min(CHUNK_BYTES, remaining))
                if not chunk:
                    raise BackupCorruptError(f"part '{path.name}' shrank while read")
                hasher.update(chunk)
                remaining -= len(chunk)
            return
        with mapped:
            mapped.madvise(mmap.MADV_SEQUENTIAL)
            with memoryview(mapped) as view:
                for start in range(0, length, _HASH_VIEW):
                    with view[start:start + _HASH_VIEW] as piece:
                        hasher.update(piece)


def _hash_direct(hasher: Any, path: Path, length: int) -> bool:
    """Hash ``path`` read with O_DIRECT on a second thread, 4 MiB ahead; False (nothing
    hashed) where the file system refuses O_DIRECT.

    An uncompressed part was written with O_DIRECT, so it is not in the page cache: reading
    it through the cache would fill a GiB of fresh pages (1-3 s of system CPU on a VM), and
    a mmap of it faults page by page. Reads go into two page-aligned 4 MiB buffers: the disk
    fills one while this thread hashes the other (hashlib releases the GIL).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except (AttributeError, OSError):
        return False
    free: queue.SimpleQueue[mmap.mmap | None] = queue.SimpleQueue()
    full: queue.SimpleQueue[tuple[mmap.mmap, int] | BaseException] = queue.SimpleQueue()
    for _ in range(2):  # one read while the other is hashed: the disk is the slower
        free.put(mmap.mmap(-1, _DIRECT_READ))

    def read() -> None:
        offset, source = 0, fd
        try:
            while offset < length:
                buffer = free.get()
                if buffer is None:
                    return
                try:
                    got = os.preadv(source, [buffer], offset)
                except OSError as exc:
                    if exc.errno != errno.EINVAL or source != fd:
                        raise
                    source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # O_DIRECT refused
                    got = os.preadv(source, [buffer], offset)
                if not got:
                    raise BackupCorruptError(f"part '{path.name}' shrank while read")
                got = min(got, length - offset)
                offset += got
                full.put((buffer, got))
        except BaseException as exc:
            full.put(exc)
        finally:
            if source != fd:
                os.close(source)

    reader = threading.Thread(target=read, daemon=True, name="backup-digest-read")
    reader.start()
    try:
        done = 0
        while done < length:
            item = full.get()
            if isinstance(item, BaseException):
                raise item
            buffer, got = item
            with memoryview(buffer) as view, view[:got] as piece:
                hasher.update(piece)
            done += got
            free.put(buffer)
    finally:
        free.put(None)  # never leave the reader waiting
        reader.join()
        os.close(fd)
    return True


def _epoch(timestamp: str) -> int:
    return calendar.timegm(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).utctimetuple())


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, total: int) -> tuple[int, int] | bool | None:
    """A single ``Range: bytes=…`` as (start, end inclusive).

    Returns None to serve the whole body (no header, a form we do not serve such as several
    ranges, or a malformed one, which RFC 9110 says to ignore) and False when the range is
    unsatisfiable (416).
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # a suffix: the last N bytes
        length = int(last)
        if length == 0:
            return False
        return max(total - length, 0), total - 1
    start = int(first)
    if start >= total:
        return False
    end = int(last) if last else total - 1
    if end < start:
        return None
    return start, min(end, total - 1)


def digest_headers(sha256_hex: str) -> dict[str, str]:
    """``Repr-Digest`` (RFC 9530, a structured byte sequence) and the legacy ``Digest``."""
    encoded = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
    return {"Repr-Digest": f"sha-256=:{encoded}:", "Digest": f"sha-256={encoded}"}


def none_match(header: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (or is ``*``): the client has these bytes.

    RFC 9110 compares weakly for If-None-Match, so ``W/"x"`` matches ``"x"``.
    """
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return f'"{etag}"' in tags
