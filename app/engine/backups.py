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
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker

from app import __version__
from app.backups.parts import CHUNK_BYTES, FORMAT, BackupStalledError, PartWriter, part_name, read_part
from app.backups.restore import image_changes
from app.backups.storage import LocalBackupStorage
from app.core.errors import ConflictError
from app.core.store import utcnow
from app.engine import guard
from app.engine.containers import JOB_LABEL, MANAGED_LABEL, describe_container, require_container
from app.engine.errors import raise_for_stream_chunk
from app.engine.provision import provision_container
from app.security.auth import Principal
from app.security.policy import SCOPE_LABEL, Policy

logger = logging.getLogger(__name__)

Progress = Callable[[int | None, int | None, str, str], None]
_HOLD = "hold.json"
# 1 MiB chunks waiting for the part writer (the writer's sha256 thread holds its own few):
# enough to overlap the engine's socket with compression and the disk, few enough that a
# backup's peak worker RSS stays under 100 MiB (docs/benchmarks.md).
_QUEUED = 4
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
    """A part writer; a zstd one compresses with ``zstd_compressor()``."""
    writer = PartWriter(path, compression)
    if compression == "zstd":
        writer._compressor = zstd_compressor()  # same format, more threads
    return writer


class StallWatchdog:
    """Calls ``abort`` when ``fed()`` has not been called for ``seconds``.

    docker-py turns the socket timeout off for export streams, so without this a silent
    engine would block the job until its hard time limit.
    """

    def __init__(self, seconds: float, abort: Callable[[], None]) -> None:
        self.seconds = seconds
        self.abort = abort
        self.fired = False
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="backup-watchdog")

    def __enter__(self) -> StallWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def fed(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.seconds / 4)):
            if time.monotonic() - self._last > self.seconds:
                self.fired = True
                try:
                    self.abort()
                except Exception:
                    logger.warning("could not abort a stalled stream", exc_info=True)
                return


def engine_stream(client: docker.DockerClient, path: str, params: dict[str, Any] | None,
                  stall: float, what: str) -> Iterator[bytes]:
    """A raw engine GET streamed in chunks; a ``stall``-second silence raises BackupStalledError."""
    api = client.api
    response = api._get(api._url(path), params=params, stream=True)
    try:
        api._raise_for_status(response)
        raw_socket = api._get_raw_response_socket(response)
        api._disable_socket_timeout(raw_socket)

        def abort() -> None:
            try:
                raw_socket.shutdown(socket.SHUT_RDWR)
            finally:
                response.close()

        body = _chunked_body(response)
        chunks = _dechunk(body) if body is not None else \
            iter(lambda: response.raw.read(CHUNK_BYTES), b"")
        with StallWatchdog(stall, abort) as watchdog:
            try:
                for chunk in chunks:
                    watchdog.fed()
                    yield chunk
            except Exception:
                if not watchdog.fired:
                    raise
            if watchdog.fired:
                raise BackupStalledError(f"the engine sent nothing for {stall:g}s while streaming "
                                         f"{what}; the backup was abandoned")
    finally:
        response.close()


def _chunked_body(response: Any) -> Any:
    """The buffered socket under a chunked response, or None (then urllib3 decodes it)."""
    http_response = getattr(response.raw, "_fp", None)
    if http_response is not None and getattr(http_response, "chunked", False):
        return getattr(http_response, "fp", None)
    return None


def _dechunk(body: Any) -> Iterator[bytes]:
    """HTTP/1.1 chunked decoding, coalesced to ~1 MiB pieces.

    urllib3 decodes the engine's many 32 KiB chunks at well under the disk's speed; reading
    the buffered socket directly keeps a backup as fast as ``docker export -o``.

    Raises:
        ConnectionError: the stream ended before its last chunk (truncated, or aborted).
    """
    pending: list[bytes] = []
    buffered = 0
    while True:
        line = body.readline(1024)
        if not line:
            raise ConnectionError("the engine closed the stream before its end")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while body.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            break
        data = body.read(size)
        if len(data) < size or body.read(2) != b"\r\n":
            raise ConnectionError("the engine closed the stream mid-chunk")
        pending.append(data)
        buffered += size
        if buffered >= CHUNK_BYTES:
            yield b"".join(pending)
            pending, buffered = [], 0
    if pending:
        yield b"".join(pending)


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
    parts = [{"path": "config.json", "kind": "config", "compression": "none", **writer.finish()}]
    rootfs = part_name("rootfs", compression)
    progress(1, total, "parts", f"exporting the filesystem to {rootfs}")
    parts.append({"path": rootfs, "kind": "rootfs", "compression": compression,
                  **_copy(engine_stream(client, f"/containers/{info['Id']}/export", None, stall,
                                        "the container export"),
                          part_writer(staging / rootfs, compression), checkpoint,
                          lambda done: progress(1, total, "parts",
                                                f"exporting the filesystem: {done >> 20} MiB"))})
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
                               stall, f"the archive of {target}")
        parts.append({"path": relative, "compression": compression, "target": target, **entry,
                      **_copy(stream, part_writer(staging / relative, compression), checkpoint,
                              lambda _done: None)})
    progress(total, total, "parts", "parts written")
    return parts


def _copy(chunks: Iterator[bytes], writer: PartWriter, checkpoint: Callable[[], None],
          report: Callable[[int], None]) -> dict[str, Any]:
    """Stream ``chunks`` into ``writer``; hashing, compressing and writing run on a second thread.

    The two sides overlap (hashlib, zlib, zstd and file writes release the GIL), and the
    queue between them holds at most ``_QUEUED`` chunks, so memory stays flat.
    """
    pipe: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED)
    failed: list[BaseException] = []

    def drain() -> None:
        while (chunk := pipe.get()) is not None:
            if failed:
                continue  # keep taking chunks so the producer never blocks on a dead writer
            try:
                writer.write(chunk)
            except BaseException as exc:
                failed.append(exc)

    thread = threading.Thread(target=drain, daemon=True, name="backup-part-writer")
    thread.start()
    try:
        next_check = time.monotonic() + 1
        for chunk in chunks:
            if failed:
                break
            pipe.put(chunk)
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
    return writer.finish()


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
