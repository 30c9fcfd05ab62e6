"""Backup bundles in shared storage: parts, manifests, the catalog, downloads, restore specs, schedules.

A bundle is a directory ``<root>/<id>/`` (the id is the job's) holding ``manifest.json``,
``config.json`` (the container's inspect), ``rootfs.tar[.gz|.zst]`` (``docker export``) and
``volumes/<name>.tar[…]`` / ``binds/<n>.tar[…]`` (``docker cp`` of each mount). Workers
write it as ``<id>.tmp/`` and rename it only once the manifest is written and fsynced, so
the catalog (the directories without ``.tmp``) never shows half a backup. Parts are written
once, straight from the engine stream; the download is a tar of the bundle assembled on the
fly with deterministic headers, so its bytes (and any ``Range`` of them) are the same on
every request without storing the data twice.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import tarfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import redis

from app.errors import DockyardError, InvalidInputError, NotFoundError
from app.ids import new_id
from app.store import PREFIX, utcnow

logger = logging.getLogger(__name__)

COMPRESSIONS = ("none", "gzip", "zstd")
CONSISTENCIES = ("none", "pause", "stop")
SUFFIXES = {"none": ".tar", "gzip": ".tar.gz", "zstd": ".tar.zst"}
MANIFEST = "manifest.json"
FORMAT = 1
CHUNK_BYTES = 1 << 20
_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
_STAGING = ".tmp"


class BackupCorruptError(DockyardError):
    """A stored part does not match the checksum its manifest recorded."""

    status, slug, title = 422, "backup-corrupt", "The backup is corrupt"


class BackupStalledError(DockyardError):
    """The engine stopped sending an export or archive stream."""

    status, slug, title = 504, "backup-stalled", "The engine stream stalled"


def backup_root(settings: Any) -> Path:
    """Where bundles live: ``DOCKYARD_BACKUP_DIR`` or ``<state_dir>/backups``.

    The API serves downloads from it and workers (agents included) write to it, so in a
    multi-machine deployment it must be one shared mount.
    """
    return Path(settings.backup_dir).resolve() if settings.backup_dir \
        else settings.state_dir / "backups"


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


# -- storage ---------------------------------------------------------------------------------


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
        """Write the manifest, fsync everything, then make the bundle visible by renaming."""
        staging = self.staging_path(backup_id)
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        fd = os.open(staging / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        for folder in sorted({(staging / p["path"]).parent for p in manifest["parts"]} | {staging}):
            _fsync_dir(folder)
        os.replace(staging, self._dir(backup_id))
        _fsync_dir(self.root)
        return manifest

    def discard(self, backup_id: str) -> None:
        shutil.rmtree(self.staging_path(backup_id), ignore_errors=True)

    def find(self, backup_id: str) -> dict[str, Any] | None:
        try:
            return self.manifest(backup_id)
        except NotFoundError:
            return None

    def manifest(self, backup_id: str) -> dict[str, Any]:
        """The bundle's manifest.

        Raises:
            NotFoundError: no such bundle.
            BackupCorruptError: the bundle folder or its manifest is a symlink.
        """
        try:
            return json.loads(self.part_path(backup_id, MANIFEST).read_bytes())
        except FileNotFoundError:
            raise NotFoundError(f"no backup '{backup_id}'") from None

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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_for(settings: Any) -> LocalBackupStorage:
    return LocalBackupStorage(backup_root(settings))


# -- the download: a deterministic tar of the bundle, built on the fly -----------------------


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
        """``paths``: the manifest's file, then each part's, in the manifest's order."""
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
        self.etag = hashlib.sha256(paths[0].read_bytes()).hexdigest()

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


# -- restore: the provision spec a bundle describes ------------------------------------------

_DOCKYARD_PREFIX = "dockyard."  # Dockyard's own labels are set anew, never carried over
_DEFAULT_NETWORKS = ("", "default", "bridge")


def image_changes(config: dict[str, Any]) -> list[str]:
    """``docker import --change`` lines restoring CMD, ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE, LABEL."""
    cfg = config.get("Config") or {}
    changes = []
    for key, instruction in (("Entrypoint", "ENTRYPOINT"), ("Cmd", "CMD")):
        if cfg.get(key):
            changes.append(f"{instruction} {json.dumps(cfg[key])}")
    for item in cfg.get("Env") or []:
        name, _, value = item.partition("=")
        changes.append(f"ENV {name}={_dockerfile_quote(value)}")
    if cfg.get("WorkingDir"):
        changes.append(f"WORKDIR {cfg['WorkingDir']}")
    if cfg.get("User"):
        changes.append(f"USER {cfg['User']}")
    for port in sorted(cfg.get("ExposedPorts") or {}):
        changes.append(f"EXPOSE {port}")
    for name, value in sorted((cfg.get("Labels") or {}).items()):
        if not name.startswith(_DOCKYARD_PREFIX):
            changes.append(f"LABEL {_dockerfile_quote(name)}={_dockerfile_quote(value)}")
    return changes


def _dockerfile_quote(value: str) -> str:
    # Dockerfile ENV/LABEL values expand $VARS and split on spaces unless quoted and escaped.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def restore_spec(manifest: dict[str, Any], config: dict[str, Any], request: dict[str, Any],
                 image: str) -> dict[str, Any]:
    """The provision spec that recreates the backed-up container, with the request's overrides.

    Ports come from the saved bindings (``overrides.ports`` replace those with the same
    container port and protocol); mounts, labels, restart policy, limits and network mode
    from the saved HostConfig. The image is the imported filesystem, which carries the saved
    command and environment.
    """
    cfg, host_cfg = config.get("Config") or {}, config.get("HostConfig") or {}
    ports: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for key, bindings in sorted((host_cfg.get("PortBindings") or {}).items()):
        number, _, protocol = key.partition("/")
        for binding in bindings or [{}]:
            ports.setdefault((int(number), protocol or "tcp"), []).append({
                "container_port": int(number), "protocol": protocol or "tcp",
                "host_ip": binding.get("HostIp") or None,
                "host_port": int(binding["HostPort"]) if binding.get("HostPort") else None})
    overridden: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for port in (request.get("overrides") or {}).get("ports") or []:
        overridden.setdefault((port["container_port"], port["protocol"]), []).append(port)
    ports.update(overridden)
    restart = host_cfg.get("RestartPolicy") or {}
    network = host_cfg.get("NetworkMode") or ""
    spec: dict[str, Any] = {
        "image": image,
        "name": request.get("name") or manifest["container"]["name"],
        "labels": {k: v for k, v in (cfg.get("Labels") or {}).items()
                   if not k.startswith(_DOCKYARD_PREFIX)}
        | {"dockyard.restored-from": manifest["id"]},
        "ports": [p for key in sorted(ports) for p in ports[key]],
        "volumes": restore_mounts(manifest, config),
        "restart_policy": {"name": restart.get("Name") or "no",
                           "maximum_retry_count": restart.get("MaximumRetryCount") or 0},
        "memory": host_cfg.get("Memory") or None,
        "cpus": (host_cfg.get("NanoCpus") or 0) / 1e9 or None,
        "network": None if network in _DEFAULT_NETWORKS else network,
        "pull": "never", "wait_for": "running", "wait_timeout": 60,
        "replace": bool(request.get("replace")), "start": bool(request.get("start", True)),
    }
    for field, key in (("privileged", "Privileged"), ("cap_add", "CapAdd"),
                       ("devices", "Devices"), ("security_opt", "SecurityOpt"),
                       ("pid_mode", "PidMode"), ("ipc_mode", "IpcMode"), ("uts_mode", "UTSMode")):
        value = host_cfg.get(key)
        if value and value not in ("private", "shareable"):
            spec[field] = value  # asked for again, so the policy judges it again
    return spec


def restore_mounts(manifest: dict[str, Any], config: dict[str, Any]) -> list[dict[str, Any]]:
    """Volume and bind mounts as provision-spec entries (anonymous volumes get fresh ones)."""
    anonymous = {p.get("volume") for p in manifest["parts"] if p.get("anonymous")}
    mounts = []
    for mount in config.get("Mounts") or []:
        kind = mount.get("Type")
        if kind == "volume":
            name = mount.get("Name")
            mounts.append({"source": None if name in anonymous or _looks_anonymous(name) else name,
                           "target": mount["Destination"], "read_only": not mount.get("RW", True),
                           "type": "volume"})
        elif kind == "bind":
            mounts.append({"source": mount["Source"], "target": mount["Destination"],
                           "read_only": not mount.get("RW", True), "type": "bind"})
    return mounts


def _looks_anonymous(name: str | None) -> bool:
    return bool(name) and re.fullmatch(r"[0-9a-f]{64}", name or "") is not None


def default_image(manifest: dict[str, Any], repository: str | None) -> str:
    """Where the imported filesystem is tagged: ``REPO:backup-<id>``."""
    repo = repository or f"dockyard-restore/{manifest['container']['name'].lower()}"
    return f"{repo}:backup-{manifest['id'].lower()}"


# -- schedules -------------------------------------------------------------------------------

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 7))
_NAMES = {3: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
          4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]}


@dataclass(frozen=True)
class CronExpression:
    """A five-field cron expression (minute hour day-of-month month day-of-week), Vixie rules:
    ``*``, lists, ranges, steps and month/day names; when both day fields are restricted a
    day matches either."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_any: bool
    weekdays_any: bool

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """Raises: ValueError naming what is wrong."""
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(f"a cron expression has 5 fields, not {len(parts)}")
        sets = [_parse_field(part, index) for index, part in enumerate(parts)]
        weekdays = frozenset(0 if d == 7 else d for d in sets[4])
        return cls(sets[0], sets[1], sets[2], sets[3], weekdays,
                   days_any=parts[2] == "*", weekdays_any=parts[4] == "*")

    def matches(self, when: datetime) -> bool:
        if when.minute not in self.minutes or when.hour not in self.hours \
                or when.month not in self.months:
            return False
        day_ok = when.day in self.days
        weekday_ok = (when.isoweekday() % 7) in self.weekdays
        if self.days_any or self.weekdays_any:
            return day_ok and weekday_ok
        return day_ok or weekday_ok


def _parse_field(text: str, index: int) -> frozenset[int]:
    name, low, high = _FIELDS[index]
    values: set[int] = set()
    for item in text.split(","):
        body, _, step_text = item.partition("/")
        step = _number(step_text, index) if step_text else 1
        if step < 1:
            raise ValueError(f"{name}: step must be at least 1")
        if body == "*":
            start, stop = low, high
        elif "-" in body:
            first, _, last = body.partition("-")
            start, stop = _number(first, index), _number(last, index)
        else:
            start = _number(body, index)
            stop = high if step_text else start
        if not (low <= start <= high and low <= stop <= high) or start > stop:
            raise ValueError(f"{name}: '{item}' is outside {low}-{high}")
        values.update(range(start, stop + 1, step))
    return frozenset(values)


def _number(text: str, index: int) -> int:
    lowered = text.lower()
    if index in _NAMES and lowered in _NAMES[index]:
        return _NAMES[index].index(lowered) + (1 if index == 3 else 0)
    if not text.isdigit():
        raise ValueError(f"{_FIELDS[index][0]}: '{text}' is not a number")
    return int(text)


def validate_cron(text: str) -> None:
    """Raises: InvalidInputError (422) naming the problem."""
    try:
        CronExpression.parse(text)
    except ValueError as exc:
        raise InvalidInputError(f"invalid cron expression: {exc}",
                                errors={"cron": [str(exc)]}) from None


_SCHEDULES = PREFIX + "backup-schedules"


class BackupScheduleStore:
    """Schedules in one Redis hash; each run is claimed once per minute across beats."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def create(self, spec: dict[str, Any], created_by: str) -> dict[str, Any]:
        record = {"id": new_id(), **spec, "created_at": utcnow(), "created_by": created_by,
                  "last_run_at": None, "last_job_id": None}
        self.redis.hset(_SCHEDULES, record["id"], json.dumps(record))
        return record

    def list(self) -> list[dict[str, Any]]:
        return sorted((json.loads(raw) for raw in self.redis.hvals(_SCHEDULES)),
                      key=lambda r: r["id"])

    def get(self, schedule_id: str) -> dict[str, Any]:
        raw = self.redis.hget(_SCHEDULES, schedule_id)
        if raw is None:
            raise NotFoundError(f"no backup schedule '{schedule_id}'")
        return json.loads(raw)

    def delete(self, schedule_id: str) -> None:
        if not self.redis.hdel(_SCHEDULES, schedule_id):
            raise NotFoundError(f"no backup schedule '{schedule_id}'")

    def claim_run(self, schedule_id: str, minute: datetime) -> bool:
        """True once per schedule and minute, whichever beat or worker asks first."""
        key = f"{_SCHEDULES}:{schedule_id}:{minute:%Y%m%d%H%M}"
        return bool(self.redis.set(key, "1", nx=True, ex=3 * 3600))

    def record_run(self, schedule_id: str, job_id: str) -> None:
        raw = self.redis.hget(_SCHEDULES, schedule_id)
        if raw is None:
            return
        record = json.loads(raw)
        record.update(last_run_at=utcnow(), last_job_id=job_id)
        self.redis.hset(_SCHEDULES, schedule_id, json.dumps(record))


def due_minutes(expression: str, now: datetime, window: int = 2) -> list[datetime]:
    """The minutes of the last ``window`` (this one included) at which the schedule fires.

    Beat ticks can drift past a minute boundary; looking one minute back (with runs claimed
    per minute) means a drifting tick neither skips nor repeats a run.
    """
    cron = CronExpression.parse(expression)
    base = now.astimezone(UTC).replace(second=0, microsecond=0)
    minutes = [datetime.fromtimestamp(base.timestamp() - 60 * back, UTC) for back in range(window)]
    return [m for m in minutes if cron.matches(m)]


def apply_retention(storage: BackupStorage, schedule_id: str, keep: int,
                    catalog: list[dict[str, Any]] | None = None) -> list[str]:
    """Delete all but the newest ``keep`` bundles a schedule made; returns the ids deleted.

    ``catalog`` (newest first) saves re-reading every manifest when many schedules are pruned.
    """
    made = [m for m in (storage.catalog() if catalog is None else catalog)
            if m.get("schedule_id") == schedule_id]
    doomed = [m["id"] for m in made[keep:]]
    for backup_id in doomed:
        try:
            storage.delete(backup_id)
        except (NotFoundError, OSError):
            logger.warning("retention could not delete backup %s", backup_id, exc_info=True)
    return doomed
