"""Uploads spooled to disk (streamed, size-limited), where the worker that runs the job reads them."""

from __future__ import annotations

import json
import os
import tarfile
import uuid
from pathlib import Path
from typing import BinaryIO

from app.core.errors import InvalidInputError, PayloadTooLargeError

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


_NAME_FILES = ("manifest.json", "repositories", "index.json")
_NAME_FILE_LIMIT = 4 << 20


def saved_image_names(path: Path) -> list[str]:
    """Every image name a ``docker save`` tar (or an OCI layout) asks ``docker load`` to set.

    Every copy of a naming file counts, so a tar holding two cannot show one and load the other.

    Raises:
        InvalidInputError: a naming file is not JSON of the expected shape.
    """
    names: list[str] = []
    with tarfile.open(path, mode="r:*") as tar:
        for member in tar:
            if member.isfile() and member.name.lstrip("./") in _NAME_FILES:
                file = tar.extractfile(member)
                names += _names_in(member.name.lstrip("./"),
                                   file.read(_NAME_FILE_LIMIT + 1) if file else b"")
    return names


def _names_in(kind: str, raw: bytes) -> list[str]:
    try:
        if len(raw) > _NAME_FILE_LIMIT:
            raise ValueError("too large")
        data = json.loads(raw)
        if kind == "manifest.json":
            return [str(tag) for entry in data for tag in entry.get("RepoTags") or []]
        if kind == "repositories":
            return [f"{repo}:{tag}" for repo, tags in data.items() for tag in tags]
        return [str(value) for manifest in data.get("manifests") or []
                for key, value in (manifest.get("annotations") or {}).items()
                if key in ("io.containerd.image.name", "org.opencontainers.image.ref.name")]
    except (ValueError, AttributeError, TypeError):
        raise InvalidInputError(f"the tar's {kind} does not parse",
                                errors={"body": [f"{kind} is not valid"]}) from None
