"""Back a container up (``docker export`` + ``docker cp`` of its mounts); restore it (``docker import``).

Kept whole: export and restore of one bundle on the engine side share the part streaming,
the stall watch and the guard checks; each half alone would hide the format both must agree
on.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker

from app import __version__
from app.backups.parts import FORMAT, BufferPool, PartWriter, part_name, read_part
from app.backups.restore import image_changes
from app.backups.storage import LocalBackupStorage
from app.core.errors import ConflictError
from app.core.store import utcnow
from app.engine import guard
from app.engine.containers import JOB_LABEL, MANAGED_LABEL, describe_container, require_container
from app.engine.errors import raise_for_stream_chunk
from app.engine.provision import provision_container
from app.engine.streaming import engine_stream
from app.security.auth import Principal
from app.security.policy import SCOPE_LABEL, Policy

logger = logging.getLogger(__name__)

Progress = Callable[[int | None, int | None, str, str], None]
_HOLD = "hold.json"
# 1 MiB buffers a part's stream cycles through: one filled from the engine's socket, the
# others queued for or being written (or compressed) and hashed. Enough to overlap the
# three, few enough that a backup's peak worker RSS stays under 100 MiB (docs/benchmarks.md).
# Uncompressed parts get more: their O_DIRECT writes wait for the disk, and a few MiB of
# slack keep the socket read through the disk's slower moments; a compressor, slower than
# the socket, would only fill them (and zstd's own buffers already take ~20 MiB).
_BUFFERS = 6
_BUFFERS_DIRECT = 16
_QUEUED = 4  # pieces waiting for the part writer, when they come from no pool
# zstd's multithreaded mode: the input is cut into jobs of this size compressed on
# ``threads`` workers while the next chunk is read (the frame stays one standard frame).
_ZSTD_JOB_BYTES = 512 << 10
_ZSTD_LEVEL = 3


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def zstd_compressor() -> Any:
    """A level-3 zstd stream compressor: multithreaded (one thread per core) when there is
    more than one core, with a content checksum in the frame either way."""
    import zstandard

    threads = -1 if _cores() > 1 else 0
    params = zstandard.ZstdCompressionParameters.from_level(
        _ZSTD_LEVEL, threads=threads, job_size=_ZSTD_JOB_BYTES if threads else 0,
        write_checksum=1)
    return zstandard.ZstdCompressor(compression_params=params).compressobj()


def part_writer(path: Any, compression: str) -> PartWriter:
    """A part writer; a zstd one compresses with ``zstd_compressor()``, an uncompressed one
    writes with O_DIRECT (whole 1 MiB pieces of the stream's pool, page-aligned)."""
    writer = PartWriter(path, compression, direct=compression == "none")
    if compression == "zstd":
        writer._compressor = zstd_compressor()  # same format, more threads
    return writer


# -- backup ----------------------------------------------------------------------------------


def back_up_container(client: docker.DockerClient, ref: str, storage: LocalBackupStorage,
                      backup_id: str, options: dict[str, Any], *, host: str, stall: float,
                      progress: Progress, checkpoint: Callable[[], None],
                      bind_allowed: Callable[[str], bool] = lambda _source: False
                      ) -> dict[str, Any]:
    """Write a bundle (inspect, export, mount archives, manifest) and publish it.

    Idempotent per ``backup_id``: a published bundle is returned as is; an earlier
    delivery's staging directory is deleted first (and a container it paused or stopped is
    resumed at the end).

    Bind mounts are archived only when asked and only if ``bind_allowed(source)`` (the
    policy's bind roots); others are listed in the manifest as ``skipped_binds``.

    Raises:
        NotFoundError: no such container.
        BackupStalledError: the engine stopped sending.
    """
    published = storage.find(backup_id)
    if published is not None:
        logger.info("backup %s already published; a redelivered job returns it", backup_id)
        return published
    info = require_container(client, ref)
    prior_hold = _read_hold(storage, backup_id)
    staging = storage.begin(backup_id)
    try:
        with _consistent(client, info, options["consistency"], staging, prior_hold):
            parts = _write_parts(client, info, staging, options, stall, progress, checkpoint,
                                 bind_allowed)
        (staging / _HOLD).unlink(missing_ok=True)
        checkpoint()
        manifest = {
            "id": backup_id, "format": FORMAT, "dockyard_version": __version__, "host": host,
            "container": {"id": info["Id"], "name": info["Name"].lstrip("/")},
            "scope": ((info.get("Config") or {}).get("Labels") or {}).get(SCOPE_LABEL),
            "image": info["Config"].get("Image"), "image_id": info.get("Image"),
            "created_at": utcnow(), "compression": options["compression"],
            "consistency": options["consistency"], "include_volumes": options["include_volumes"],
            "include_binds": options["include_binds"], "note": options.get("note"),
            "schedule_id": options.get("schedule_id"), "parts": parts,
            "skipped_binds": [m["Source"] for m in info.get("Mounts") or []
                              if m.get("Type") == "bind" and options["include_binds"]
                              and not bind_allowed(m["Source"])],
            "size": sum(p["size"] for p in parts),
        }
        return storage.publish(backup_id, manifest)
    except BaseException:
        storage.discard(backup_id)
        raise


def _write_parts(client: docker.DockerClient, info: dict[str, Any], staging: Any,
                 options: dict[str, Any], stall: float, progress: Progress,
                 checkpoint: Callable[[], None],
                 bind_allowed: Callable[[str], bool]) -> list[dict[str, Any]]:
    compression = options["compression"]
    mounts = [m for m in info.get("Mounts") or []
              if (m.get("Type") == "volume" and options["include_volumes"])
              or (m.get("Type") == "bind" and options["include_binds"]
                  and bind_allowed(m["Source"]))]
    total = 2 + len(mounts)
    progress(0, total, "parts", "writing config.json")
    config = json.dumps(info, indent=2, sort_keys=True).encode()
    writer = PartWriter(staging / "config.json", "none")
    writer.write(config)
    # Parts are fsynced when the bundle is published, while its download is hashed.
    parts = [{"path": "config.json", "kind": "config", "compression": "none",
              **writer.finish(durable=False)}]
    pool = BufferPool(_BUFFERS_DIRECT if compression == "none" else _BUFFERS)
    rootfs = part_name("rootfs", compression)
    progress(1, total, "parts", f"exporting the filesystem to {rootfs}")
    parts.append({"path": rootfs, "kind": "rootfs", "compression": compression,
                  **_copy(engine_stream(client, f"/containers/{info['Id']}/export", None, stall,
                                        "the container export", pool),
                          part_writer(staging / rootfs, compression), checkpoint,
                          lambda done: progress(1, total, "parts",
                                                f"exporting the filesystem: {done >> 20} MiB"),
                          pool)})
    for index, mount in enumerate(mounts, start=2):
        target = mount["Destination"]
        if mount["Type"] == "volume":
            relative = "volumes/" + part_name(mount["Name"], compression)
            entry = {"kind": "volume", "volume": mount["Name"],
                     "anonymous": _anonymous(mount["Name"])}
        else:
            relative = f"binds/{index - 2}" + part_name("", compression)
            entry = {"kind": "bind", "source": mount["Source"]}
        progress(index, total, "parts", f"archiving {target}")
        stream = engine_stream(client, f"/containers/{info['Id']}/archive", {"path": target},
                               stall, f"the archive of {target}", pool)
        parts.append({"path": relative, "compression": compression, "target": target, **entry,
                      **_copy(stream, part_writer(staging / relative, compression), checkpoint,
                              lambda _done: None, pool)})
    progress(total, total, "parts", "parts written")
    return parts


def _copy(chunks: Iterator[Any], writer: PartWriter, checkpoint: Callable[[], None],
          report: Callable[[int], None], pool: BufferPool | None = None) -> dict[str, Any]:
    """Stream ``chunks`` into ``writer`` (not fsynced: see ``finish(durable=False)``).

    Three threads overlap: this one reads the engine's socket, a second writes (or
    compresses) each piece and a third hashes it (hashlib, zlib, zstd and file writes release
    the GIL). Pieces of ``pool`` go back to it once written and hashed, so memory stays flat.
    """
    give = pool.give if pool is not None else (lambda _piece: None)
    pipe: queue.Queue[Any] = queue.Queue(maxsize=pool.count if pool is not None else _QUEUED)
    failed: list[BaseException] = []

    def drain() -> None:
        while (piece := pipe.get()) is not None:
            if failed:
                give(piece)  # keep taking pieces so the producer never blocks on a dead writer
                continue
            try:
                writer.write(piece, done=lambda piece=piece: give(piece))
            except BaseException as exc:  # write gave the piece back
                failed.append(exc)

    thread = threading.Thread(target=drain, daemon=True, name="backup-part-writer")
    thread.start()
    try:
        next_check = time.monotonic() + 1
        for piece in chunks:
            if failed:
                give(piece)
                break
            pipe.put(piece)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1
                checkpoint()
                report(writer.raw_size)
    except BaseException:
        pipe.put(None)
        thread.join()
        writer.abort()
        close = getattr(chunks, "close", None)
        if close:
            close()
        raise
    pipe.put(None)
    thread.join()
    if failed:
        writer.abort()
        close = getattr(chunks, "close", None)
        if close:
            close()
        raise failed[0]
    return writer.finish(durable=False)


def _anonymous(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _read_hold(storage: LocalBackupStorage, backup_id: str) -> str | None:
    try:
        return json.loads((storage.staging_path(backup_id) / _HOLD).read_text()).get("hold")
    except (OSError, ValueError):
        return None


class _consistent:  # noqa: N801 (used as a context manager, reads like one)
    """Pause or stop the container for the duration; resume it however the backup ends.

    The hold is recorded in the staging directory before it is taken, so a redelivered job
    knows that a paused (or stopped) container was paused by its earlier delivery.
    """

    def __init__(self, client: docker.DockerClient, info: dict[str, Any], mode: str,
                 staging: Any, prior_hold: str | None) -> None:
        self.client, self.info, self.mode = client, info, mode
        self.staging, self.prior = staging, prior_hold
        self.hold: str | None = None

    def __enter__(self) -> _consistent:
        state, cid = self.info["State"], self.info["Id"]
        if self.mode == "pause" and (state.get("Running") or self.prior == "paused"):
            self._record("paused")
            if not state.get("Paused"):
                self.client.api.pause(cid)
        elif self.mode == "stop" and (state.get("Running") or self.prior == "stopped"):
            self._record("stopped")
            if state.get("Running"):
                self.client.api.stop(cid, timeout=30)
        elif self.prior:
            self.hold = self.prior  # the earlier delivery held it; release it at the end
        return self

    def _record(self, hold: str) -> None:
        (self.staging / _HOLD).write_text(json.dumps({"hold": hold}))
        self.hold = hold

    def __exit__(self, *_: object) -> None:
        cid = self.info["Id"]
        try:
            if self.hold == "paused":
                if self.client.api.inspect_container(cid)["State"].get("Paused"):
                    self.client.api.unpause(cid)
            elif self.hold == "stopped":
                self.client.api.start(cid)
        except docker.errors.APIError:
            logger.warning("could not resume container %s after its backup", cid[:12],
                           exc_info=True)
            raise


# -- restore ---------------------------------------------------------------------------------


def restore_container(client: docker.DockerClient, storage: LocalBackupStorage, backup_id: str,
                      spec: dict[str, Any], job_id: str, *, caller: Principal, policy: Policy,
                      progress: Progress, checkpoint: Callable[[], None]) -> dict[str, Any]:
    """Verify the bundle, import its filesystem, recreate volumes and the container.

    ``spec`` is a provision spec (from ``restore_spec``, policy-checked by the caller). The
    container is created stopped so volume archives land before its process starts.

    Raises:
        BackupCorruptError: a part does not match the manifest (nothing is created).
        ConflictError: the name or a named volume is in use (without ``replace``).
    """
    manifest = storage.verify(backup_id, on_part=lambda part: progress(
        None, None, "parts", f"verifying {part['path']}"))
    checkpoint()
    guard.check_named_volumes(client, spec, caller, policy)  # before a byte is loaded into one
    name = spec.get("name")
    if name and not spec.get("replace") and _adoptable(client, name, job_id) is False:
        raise ConflictError(f"container name '{name}' is already in use; pass replace: true "
                            "to replace it", name=name)
    volumes = [p for p in manifest["parts"] if p["kind"] == "volume"]
    created_volumes = _create_volumes(client, spec, volumes, job_id)
    image = spec["image"]
    repository, _, tag = image.rpartition(":")
    try:
        progress(1, 4, "steps", f"importing the filesystem as {image}")
        rootfs = next(p for p in manifest["parts"] if p["kind"] == "rootfs")
        config = storage.container_config(backup_id)
        image_id = import_rootfs(client, read_part(storage.part_path(backup_id, rootfs["path"]),
                                                   rootfs["compression"]),
                                 repository, tag, image_changes(config))
        checkpoint()
        progress(2, 4, "steps", "creating the container")
        created = provision_container(client, {**spec, "start": False, "wait_for": "none"},
                                      job_id, caller=caller, policy=policy, checkpoint=checkpoint)
        progress(3, 4, "steps", "loading volume and bind archives")
        for part in manifest["parts"]:
            if part["kind"] in ("volume", "bind"):
                checkpoint()
                client.api.put_archive(created["id"], posixpath.dirname(part["target"]) or "/",
                                       read_part(storage.part_path(backup_id, part["path"]),
                                                 part["compression"]))
        if spec.get("start", True):
            progress(4, 4, "steps", "starting the container")
            created = provision_container(client, spec, job_id, caller=caller, policy=policy,
                                          checkpoint=checkpoint)
        info = client.api.inspect_container(created["id"])
    except BaseException:
        for volume in created_volumes:
            _remove_volume(client, volume)
        raise
    return {"backup": backup_id, "image": image, "image_id": image_id,
            "volumes": [v["volume"] for v in volumes],
            "container": describe_container(info)}


def _adoptable(client: docker.DockerClient, name: str, job_id: str) -> bool | None:
    """None: the name is free; True: this job made the container there; False: taken."""
    try:
        info = client.api.inspect_container(name)
    except docker.errors.NotFound:
        return None
    return (info["Config"].get("Labels") or {}).get(JOB_LABEL) == job_id


def _create_volumes(client: docker.DockerClient, spec: dict[str, Any],
                    volumes: list[dict[str, Any]], job_id: str) -> list[str]:
    """Create the named volumes the spec mounts; an existing one must be this job's or replaced."""
    wanted = {v["target"]: v["source"] for v in spec.get("volumes") or [] if v["type"] == "volume"}
    created = []
    for part in volumes:
        name = wanted.get(part["target"])
        if not name:
            continue  # anonymous: the engine makes a fresh one with the container
        try:
            labels = client.api.inspect_volume(name).get("Labels") or {}
        except docker.errors.NotFound:
            client.api.create_volume(name, labels={MANAGED_LABEL: "true", JOB_LABEL: job_id})
            created.append(name)
            continue
        if labels.get(JOB_LABEL) != job_id and not spec.get("replace"):
            raise ConflictError(f"volume '{name}' already exists; remove it or pass replace: true "
                                "to load the backup into it", volume=name)
    return created


def _remove_volume(client: docker.DockerClient, name: str) -> None:
    try:
        client.api.remove_volume(name, force=True)
    except docker.errors.APIError:
        logger.warning("could not remove volume %s after a failed restore", name, exc_info=True)


def import_rootfs(client: docker.DockerClient, data: Iterator[bytes], repository: str, tag: str,
                  changes: list[str]) -> str | None:
    """``docker import - REPO:TAG --change …`` from a stream (sent chunked, never held whole)."""
    api = client.api
    params = {"fromSrc": "-", "repo": repository, "tag": tag, "changes": changes or None}
    response = api._post(api._url("/images/create"), data=data, params=params,
                         headers={"Content-Type": "application/tar"}, timeout=None)
    api._raise_for_status(response)
    image_id = None
    for line in response.text.splitlines():
        if line.strip():
            chunk = json.loads(line)
            raise_for_stream_chunk(chunk)
            image_id = chunk.get("status", image_id)
    return image_id
