"""The multithreaded zstd part writer writes one standard frame that read_part reads back."""

from __future__ import annotations

import hashlib
import os

import zstandard

from app.backups.parts import read_part
from app.engine.backups import part_writer, zstd_compressor


def test_a_zstd_part_reads_back_byte_for_byte_and_its_manifest_entry_matches(tmp_path):
    data = os.urandom(3 << 20) + b"dockyard" * (512 << 10) + os.urandom(12345)
    path = tmp_path / "rootfs.tar.zst"
    writer = part_writer(path, "zstd")
    for start in range(0, len(data), 1 << 20):
        writer.write(data[start:start + (1 << 20)])
    entry = writer.finish()
    stored = path.read_bytes()
    assert entry == {"sha256": hashlib.sha256(stored).hexdigest(), "size": len(stored),
                     "uncompressed_size": len(data)}
    assert len(stored) < len(data)
    assert b"".join(read_part(path, "zstd")) == data
    # One frame, with a content checksum the decoder verifies.
    params = zstandard.get_frame_parameters(stored)
    assert params.has_checksum


def test_a_corrupted_zstd_part_fails_its_checksum(tmp_path):
    compressor = zstd_compressor()
    data = os.urandom(1 << 20)
    frame = bytearray(compressor.compress(data) + compressor.flush())
    frame[-1] ^= 0xFF  # the checksum's last byte
    path = tmp_path / "bad.tar.zst"
    path.write_bytes(bytes(frame))
    try:
        b"".join(read_part(path, "zstd"))
    except zstandard.ZstdError:
        return
    raise AssertionError("a bad checksum was not noticed")
