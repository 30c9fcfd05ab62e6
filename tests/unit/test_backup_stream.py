"""A backup's per-byte path without an engine: the chunked decoder on a socket's reads, the
buffer pool, O_DIRECT part writes and the download's digest read back with O_DIRECT."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading

import pytest

from app.backups import download
from app.backups.download import BundleArchive
from app.backups.parts import BackupCorruptError, BufferPool, PartWriter
from app.engine import backups
from app.engine.streaming import decode_chunked


def chunked(*pieces: bytes, trailer: bytes = b"") -> bytes:
    return b"".join(b"%x;ext=1\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n" + trailer + b"\r\n"


def reads_of(data: bytes, seed: int):
    """A readinto that hands ``data`` out in random small pieces, as a socket may."""
    rng = random.Random(seed)
    offset = [0]

    def readinto(view: memoryview) -> int:
        size = min(len(view), rng.randint(1, 70_000), len(data) - offset[0])
        view[:size] = data[offset[0]:offset[0] + size]
        offset[0] += size
        return size

    return readinto


@pytest.mark.parametrize("seed", range(4))
def test_decoding_fills_whole_pool_buffers_whatever_the_reads(seed):
    rng = random.Random(seed)
    pieces = [os.urandom(rng.choice([1, 7, 32768, 40_000, 100_000])) for _ in range(80)]
    body = chunked(*pieces, trailer=b"X-Trailer: 1\r\n")
    pool = BufferPool(2, size=64 << 10)
    out = []
    for view in decode_chunked(reads_of(body[5:], seed), pool, body[:5]):
        out.append(bytes(view))
        pool.give(view)  # two buffers only: a piece not given back would block the next
    assert b"".join(out) == b"".join(pieces)
    assert all(len(o) == 64 << 10 for o in out[:-1]) and 0 < len(out[-1]) <= 64 << 10


@pytest.mark.parametrize("body", [
    chunked(b"a" * 100)[:-1],           # no final CRLF
    chunked(b"a" * 100, b"b" * 10)[:60],  # mid-chunk
    b"zz\r\nabc\r\n0\r\n\r\n",          # not a hex size
    b"3\r\nabcXY0\r\n\r\n",             # no CRLF after the data
])
def test_decoding_refuses_a_truncated_or_malformed_stream(body):
    pool = BufferPool(1, size=4096)
    with pytest.raises(ConnectionError):
        for view in decode_chunked(reads_of(body, 1), pool):
            pool.give(view)
    assert pool.available == 1  # the buffer went back to the pool


def test_decoding_reads_a_real_socket_to_its_end_and_no_further():
    reader, writer = socket.socketpair()
    data = os.urandom(3 << 20)
    body = chunked(*(data[i:i + 32768] for i in range(0, len(data), 32768)))
    sender = threading.Thread(target=writer.sendall, args=(body,))
    sender.start()
    try:  # the writer stays open (keep-alive): the decoder must stop at the last chunk
        pool = BufferPool(3)
        got = hashlib.sha256()
        for view in decode_chunked(reader.recv_into, pool):
            got.update(view)
            pool.give(view)
        assert got.hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        sender.join()
        reader.close()
        writer.close()


@pytest.mark.parametrize("tail", [0, 1000, 4096 * 3 + 512])
def test_a_direct_part_from_pool_buffers_and_an_odd_tail_reads_back_whole(tmp_path, tail):
    pool = BufferPool(3)
    data = os.urandom((2 << 20) + tail)
    writer = PartWriter(tmp_path / "rootfs.tar", "none", direct=True)
    for start in range(0, len(data), pool.size):
        buffer = pool.take()
        piece = memoryview(buffer)[:min(pool.size, len(data) - start)]
        piece[:] = data[start:start + len(piece)]
        writer.write(piece, done=lambda piece=piece: pool.give(piece))
    entry = writer.finish()
    stored = (tmp_path / "rootfs.tar").read_bytes()
    assert stored == data
    assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                     "uncompressed_size": len(data)}
    assert pool.available == 3  # every buffer came back


def test_a_direct_part_takes_unaligned_bytes_too(tmp_path):
    data = [b"x" * 1000, os.urandom(1 << 20), b"tail"]
    writer = PartWriter(tmp_path / "p", "none", direct=True)
    for piece in data:
        writer.write(piece)
    writer.finish()
    assert (tmp_path / "p").read_bytes() == b"".join(data)


def test_a_failing_writer_gives_every_buffer_back_and_the_copy_raises(tmp_path):
    pool = BufferPool(2, size=4096)

    class Full(PartWriter):
        def write(self, data, done=None):
            if self.raw_size > 8192:
                if done:
                    done()
                raise OSError(28, "No space left on device")
            super().write(data, done)

    def stream():
        for _ in range(50):
            buffer = pool.take()
            yield memoryview(buffer)

    result: list[BaseException] = []
    thread = threading.Thread(target=lambda: _capture(result, lambda: backups._copy(
        stream(), Full(tmp_path / "p", "none"), lambda: None, lambda _done: None, pool)))
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the copy blocked on a buffer the failed writer kept"
    assert isinstance(result[0], OSError) and result[0].errno == 28


def _capture(into: list, run) -> None:
    try:
        run()
    except BaseException as exc:
        into.append(exc)


@pytest.mark.parametrize("size", [0, 5, 4096, (1 << 20) + 777])
def test_the_download_digest_read_with_o_direct_is_the_digest_of_its_bytes(
        tmp_path, monkeypatch, size):
    monkeypatch.setattr(download, "_DIRECT_MIN", 1)
    monkeypatch.setattr(download, "_DIRECT_READ", 256 << 10)
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(b"{}")
    part = tmp_path / "rootfs.tar"
    part.write_bytes(os.urandom(size))
    archive = BundleArchive({"id": "B", "created_at": "2026-01-02T03:04:05Z",
                             "parts": [{"path": "rootfs.tar"}]}, [manifest, part])
    assert archive.digest() == {"sha256": hashlib.sha256(b"".join(archive.read())).hexdigest(),
                                "size": archive.size}


@pytest.mark.parametrize("direct_min", [1, 1 << 40])
def test_a_part_that_shrank_is_corrupt_for_the_digest(tmp_path, monkeypatch, direct_min):
    monkeypatch.setattr(download, "_DIRECT_MIN", direct_min)
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(b"{}")
    part = tmp_path / "rootfs.tar"
    part.write_bytes(b"x" * 10000)
    archive = BundleArchive({"id": "B", "created_at": "2026-01-02T03:04:05Z",
                             "parts": [{"path": "rootfs.tar"}]}, [manifest, part])
    part.write_bytes(b"x" * 100)
    with pytest.raises(BackupCorruptError):
        archive.digest()


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_write_that_fails_still_gives_its_piece_back_once(tmp_path, compression):
    writer = PartWriter(tmp_path / "p", compression, direct=True)
    os.close(writer._fd)
    writer._fd = os.open(tmp_path / "p", os.O_RDONLY)  # every write now fails (EBADF)
    calls = []
    with pytest.raises(OSError):
        writer.write(os.urandom(1 << 20), done=lambda: calls.append(1))
        writer.finish()  # zstd may hold the bytes until its flush
    assert calls == [1]
    writer.abort()
