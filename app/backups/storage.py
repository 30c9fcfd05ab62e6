"""Where bundles live: staging, publishing, the catalog, deletion and safe part paths.

Workers write a bundle as ``<id>.tmp/`` and rename it only once the manifest is written and
fsynced, so the catalog (the directories without ``.tmp``) never shows half a backup.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Protocol

from app.backups.download import BundleArchive
from app.backups.parts import MANIFEST, BackupCorruptError, file_sha256
from app.core.errors import NotFoundError

logger = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
_STAGING = ".tmp"
CONTENT = "content.json"  # the download's sha256 and size, beside (not in) the bundle's tar


def backup_root(settings: Any) -> Path:
    """Where bundles live: ``DOCKYARD_BACKUP_DIR`` or ``<state_dir>/backups``.

    The API serves downloads from it and workers (agents included) write to it, so in a
    multi-machine deployment it must be one shared mount.
    """
    return Path(settings.backup_dir).resolve() if settings.backup_dir \
        else settings.state_dir / "backups"



class BackupStorage(Protocol):
    """What workers and the API need from wherever bundles are kept."""

    def begin(self, backup_id: str) -> Path: ...
    def publish(self, backup_id: str, manifest: dict[str, Any]) -> dict[str, Any]: ...
    def discard(self, backup_id: str) -> None: ...
    def find(self, backup_id: str) -> dict[str, Any] | None: ...
    def manifest(self, backup_id: str) -> dict[str, Any]: ...
    def catalog(self) -> list[dict[str, Any]]: ...
    def delete(self, backup_id: str) -> None: ...
    def part_path(self, backup_id: str, relative: str) -> Path: ...
    def container_config(self, backup_id: str) -> dict[str, Any]: ...
    def archive(self, backup_id: str) -> BundleArchive: ...


class LocalBackupStorage:
    """Bundles as directories under one root (a local disk or a shared mount)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, backup_id: str) -> Path:
        if not _ID.match(backup_id or ""):
            raise NotFoundError(f"no backup '{backup_id}'")
        return self.root / backup_id

    def staging_path(self, backup_id: str) -> Path:
        return self._dir(backup_id).with_name(backup_id + _STAGING)

    def begin(self, backup_id: str) -> Path:
        """A fresh staging directory; what an earlier delivery of the job left there goes."""
        staging = self.staging_path(backup_id)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True, mode=0o750)
        return staging

    def publish(self, backup_id: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest and the download's checksum, fsync everything (the parts
        included), then make the bundle visible by renaming; the manifest with
        ``content_sha256`` and ``content_size``."""
        staging = self.staging_path(backup_id)
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        fd = os.open(staging / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        # The parts reach the disk (workers write them without fsync) while the download is
        # hashed from the page cache: the disk and the CPU work at the same time.
        syncing = _Background(lambda: [_fsync_file(staging / p["path"]) for p in manifest["parts"]])
        try:
            content = self._record_content(staging, manifest)
        finally:
            syncing.join()
        for folder in sorted({(staging / p["path"]).parent for p in manifest["parts"]} | {staging}):
            _fsync_dir(folder)
        os.replace(staging, self._dir(backup_id))
        _fsync_dir(self.root)
        return {**manifest, **content}

    @staticmethod
    def _record_content(staging: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """Hash the download the staged bundle makes and write it to ``content.json``.

        The download is a tar whose part headers carry sizes known only once each part is
        written, so its sha256 cannot be taken while the parts stream in: it costs one more
        read of the parts. It is taken here, once per bundle on the worker that just wrote
        them (still in the page cache), rather than at the first download: the digest
        headers go out before the body, so a first download would read the whole bundle
        before its first byte in an API process, and the record would show no checksum
        until someone downloaded it. ``content.json`` is not part of the download (the
        manifest is, so it cannot hold its own checksum).
        """
        paths = [staging / MANIFEST, *(staging / p["path"] for p in manifest["parts"])]
        digest = BundleArchive(manifest, paths).digest()
        content = {"content_sha256": digest["sha256"], "content_size": digest["size"]}
        fd = os.open(staging / CONTENT, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, json.dumps(content).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return content

    def discard(self, backup_id: str) -> None:
        shutil.rmtree(self.staging_path(backup_id), ignore_errors=True)

    def find(self, backup_id: str) -> dict[str, Any] | None:
        try:
            return self.manifest(backup_id)
        except NotFoundError:
            return None

    def manifest(self, backup_id: str) -> dict[str, Any]:
        """The bundle's manifest, with its download's ``content_sha256`` and ``content_size``
        (None for a bundle published before they were recorded).

        Raises:
            NotFoundError: no such bundle.
            BackupCorruptError: the bundle folder or its manifest is a symlink.
        """
        try:
            manifest = json.loads(self.part_path(backup_id, MANIFEST).read_bytes())
        except FileNotFoundError:
            raise NotFoundError(f"no backup '{backup_id}'") from None
        try:
            content = json.loads(self.part_path(backup_id, CONTENT).read_bytes())
        except FileNotFoundError:
            content = {}
        return {**manifest, "content_sha256": content.get("content_sha256"),
                "content_size": content.get("content_size")}

    def catalog(self) -> list[dict[str, Any]]:
        """Every published bundle's manifest, newest first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in os.scandir(self.root):
            if entry.is_dir(follow_symlinks=False) and _ID.match(entry.name):
                try:
                    manifest = self.find(entry.name)
                except BackupCorruptError:
                    logger.warning("backup %s skipped: its manifest escapes the bundle folder",
                                   entry.name)
                    continue
                if manifest is not None:
                    found.append(manifest)
        return sorted(found, key=lambda m: m["id"], reverse=True)

    def delete(self, backup_id: str) -> None:
        folder = self._dir(backup_id)
        if not folder.is_dir():
            raise NotFoundError(f"no backup '{backup_id}'")
        # Rename first so a half-deleted bundle never lists as a whole one.
        doomed = folder.with_name(f"{backup_id}.deleting")
        os.replace(folder, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def part_path(self, backup_id: str, relative: str) -> Path:
        """Where a part named by the manifest lies, once it is sure to lie inside the bundle.

        Bundles are written by Dockyard, but a bundle folder can be tampered with or copied
        in: a manifest could name ``/etc/shadow`` or ``../other/part``, or a part could be a
        symlink pointing out of the folder.

        Raises:
            BackupCorruptError: the path is absolute, has an empty, ``.`` or ``..`` component,
                or it (or the bundle folder) is or passes through a symlink.
        """
        folder = self._dir(backup_id)
        components = relative.split("/") if isinstance(relative, str) else [""]
        if not relative or relative.startswith("/") or "\\" in relative or "\0" in relative \
                or any(c in ("", ".", "..") for c in components):
            raise _escaping_part(backup_id, relative)
        current = folder
        for component in ["", *components]:
            current = current / component if component else current
            if current.is_symlink():
                raise _escaping_part(backup_id, relative)
        if not current.resolve().is_relative_to(self.root.resolve() / backup_id):
            raise _escaping_part(backup_id, relative)
        return current

    def container_config(self, backup_id: str) -> dict[str, Any]:
        """The container's saved ``docker inspect`` document."""
        return json.loads(self.part_path(backup_id, "config.json").read_bytes())

    def archive(self, backup_id: str) -> BundleArchive:
        """The bundle as a tar stream, every part checked to lie inside the bundle first.

        Raises:
            BackupCorruptError: a part path escapes the bundle folder.
        """
        manifest = self.manifest(backup_id)
        paths = [self.part_path(backup_id, relative)
                 for relative in [MANIFEST, *(p["path"] for p in manifest["parts"])]]
        return BundleArchive(manifest, paths)

    def verify(self, backup_id: str, on_part: Any = None) -> dict[str, Any]:
        """The manifest, once every part's size and sha256 match it.

        Raises:
            BackupCorruptError: a part is missing or differs from what was recorded.
        """
        manifest = self.manifest(backup_id)
        for part in manifest["parts"]:
            if on_part:
                on_part(part)
            path = self.part_path(backup_id, part["path"])
            if not path.is_file():
                raise BackupCorruptError(f"backup '{backup_id}' is corrupt: part '{part['path']}' "
                                         "is missing; nothing was restored", part=part["path"])
            actual = file_sha256(path)
            if actual != part["sha256"] or path.stat().st_size != part["size"]:
                raise BackupCorruptError(
                    f"backup '{backup_id}' is corrupt: part '{part['path']}' has sha256 {actual}, "
                    f"the manifest recorded {part['sha256']}; nothing was restored",
                    part=part["path"])
        return manifest


def _escaping_part(backup_id: str, relative: Any) -> BackupCorruptError:
    return BackupCorruptError(
        f"backup '{backup_id}' is corrupt: part path '{relative}' escapes the bundle folder "
        "(absolute, '..' or a symlink); nothing was read from it", part=str(relative))


class _Background:
    """``work`` on its own thread; ``join`` waits for it and raises what it raised."""

    def __init__(self, work: Any) -> None:
        self._error: BaseException | None = None

        def run() -> None:
            try:
                work()
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True, name="backup-fsync")
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_for(settings: Any) -> LocalBackupStorage:
    return LocalBackupStorage(backup_root(settings))
