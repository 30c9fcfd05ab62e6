"""Uploads spooled to disk (streamed, size-limited), where the worker that runs the job reads them."""

from __future__ import annotations

import os
import tarfile
import uuid
from pathlib import Path
from typing import BinaryIO

from app.errors import InvalidInputError, PayloadTooLargeError

_CHUNK = 1 << 20


def spool_dir(state_dir: Path) -> Path:
    folder = state_dir / "spool"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def spool_upload(stream: BinaryIO, folder: Path, limit: int) -> Path:
    """Copy a request body to ``folder`` chunk by chunk; never more than one chunk in memory.

    The file appears under its final name only when complete, so a worker never reads a
    half-written upload.

    Raises:
        PayloadTooLargeError: the body is larger than ``limit`` (nothing is left behind).
        InvalidInputError: the body is empty.
    """
    name = uuid.uuid4().hex
    partial = folder / f"{name}.part"
    size = 0
    try:
        with open(partial, "wb") as out:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"the upload is larger than {limit} bytes")
                out.write(chunk)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if size == 0:
        partial.unlink(missing_ok=True)
        raise InvalidInputError("the body is empty; send a tar archive")
    final = folder / f"{name}.tar"
    os.replace(partial, final)
    return final


def require_tar(path: Path) -> None:
    """Refuse (and delete) an upload that is not a tar archive (plain or compressed).

    Raises:
        InvalidInputError: not a tar archive.
    """
    try:
        ok = tarfile.is_tarfile(path)
    except OSError:
        ok = False
    if not ok:
        path.unlink(missing_ok=True)
        raise InvalidInputError("the body is not a tar archive",
                                errors={"body": ["not a tar archive"]})
