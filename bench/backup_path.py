"""The backup's per-byte path taken apart: CPU seconds and wall time of each stage.

A busybox container holds ``DOCKYARD_BENCH_BACKUP_MIB`` (default 256) MiB of random data;
its export is streamed through growing parts of the path a backup takes (app/engine/
backups.py), in this process, on the same engine:

- the engine socket alone (``engine_stream``, chunks dropped);
- + sha256 (the part writer's hash thread);
- + the file (write, then fsync), compression none: the whole ``_copy`` of a backup;
- the same with zstd single-threaded, and with the multithreaded compressor backups use;

and, without the engine, each step over the same bytes held in memory. For each: wall
seconds, this process's CPU seconds (all threads) and the engine's (dockerd's), so the sum
says whether a stage is CPU-bound and where the CPU goes.

    source .state/run/env && .venv/bin/python -m bench.backup_path
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker

from app.backups.parts import BufferPool, PartWriter
from app.engine import backups as engine_backups
from app.engine import streaming
from bench.common import ROOT, TEST_IMAGE, docker_host, machine_summary, table

SIZE_MIB = int(os.environ.get("DOCKYARD_BENCH_BACKUP_MIB", "256"))
NAME = "dy-bench-backup-path"
_TICK = os.sysconf("SC_CLK_TCK")


def dockerd_pid() -> int | None:
    """The dockerd serving DOCKER_HOST (its socket on its command line), or the only one."""
    sock = docker_host().removeprefix("unix://")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"dockerd"):
            found.append((int(entry.name), sock.encode() in b" ".join(cmd)))
    mine = [pid for pid, matches in found if matches]
    return mine[0] if mine else (found[0][0] if len(found) == 1 else None)


def cpu_of(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def measure(label: str, run: Callable[[], None], engine_pid: int | None) -> list[str]:
    wall, cpu, engine = time.perf_counter(), time.process_time(), cpu_of(engine_pid)
    run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    engine = cpu_of(engine_pid) - engine
    return [label, f"{wall:.2f}", f"{SIZE_MIB / wall:.0f}", f"{cpu:.2f}", f"{engine:.2f}",
            f"{(cpu + engine) / wall:.2f}"]


def _compressible(size: int) -> bytes:
    """``size`` bytes of the standard library's sources: text zstd shrinks about 4x."""
    import sysconfig

    parts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        data = path.read_bytes()
        parts.append(data)
        total += len(data)
        if total >= size:
            break
    joined = b"".join(parts)
    return (joined * (size // max(len(joined), 1) + 1))[:size]


def main() -> int:
    client = docker.DockerClient(base_url=docker_host())
    engine_pid = dockerd_pid()
    work = ROOT / ".state" / "bench-backup-path"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    container = client.containers.run(
        TEST_IMAGE, ["sh", "-c", f"dd if=/dev/urandom of=/big bs=1M count={SIZE_MIB} "
                                 "2>/dev/null; touch /done; sleep 3600"],
        name=f"{NAME}-{os.getpid()}", detach=True, labels={"dockyard.bench": "backup-path"})
    try:
        while container.exec_run(["test", "-f", "/done"]).exit_code:
            time.sleep(0.5)

        def export(pool: BufferPool) -> Iterator[memoryview]:
            return streaming.engine_stream(client, f"/containers/{container.id}/export",
                                           None, 60, "the export", pool)

        def drop() -> None:
            pool = BufferPool(engine_backups._BUFFERS)
            for piece in export(pool):
                pool.give(piece)

        def hashed() -> None:
            pool = BufferPool(engine_backups._BUFFERS)
            digest = hashlib.sha256()
            for piece in export(pool):
                digest.update(piece)
                pool.give(piece)

        def copy(compression: str, writer: Callable[[Path, str], PartWriter]) -> Callable[[], None]:
            def run() -> None:
                target = work / f"part-{compression}"
                pool = BufferPool(engine_backups._BUFFERS_DIRECT if compression == "none"
                                  else engine_backups._BUFFERS)
                engine_backups._copy(export(pool), writer(target, compression), lambda: None,
                                     lambda _done: None, pool)
                fd = os.open(target, os.O_RDONLY)
                try:
                    os.fsync(fd)  # _copy leaves it to the bundle's publish
                finally:
                    os.close(fd)
                target.unlink()
            return run

        def single_zstd(path: Path, compression: str) -> PartWriter:
            return PartWriter(path, compression)  # zstandard's default: one thread

        def buffered(path: Path, compression: str) -> PartWriter:
            return PartWriter(path, compression)  # through the page cache, as before O_DIRECT

        rows = [
            measure("engine socket only (engine_stream, chunks dropped)", drop, engine_pid),
            measure("+ sha256 in line", hashed, engine_pid),
            measure("backup `_copy`, compression none (hash thread, O_DIRECT write, fsync)",
                    copy("none", engine_backups.part_writer), engine_pid),
            measure("backup `_copy`, compression none, through the page cache",
                    copy("none", buffered), engine_pid),
            measure("backup `_copy`, zstd single-threaded", copy("zstd", single_zstd), engine_pid),
            measure("backup `_copy`, zstd multithreaded (what backups use)",
                    copy("zstd", engine_backups.part_writer), engine_pid),
        ]
        # 16 distinct random MiB in turn: more than zstd's window, so nothing repeats for it.
        distinct = [os.urandom(1 << 20) for _ in range(16)]
        chunks = [distinct[index % 16] for index in range(SIZE_MIB)]

        def mem_sha() -> None:
            digest = hashlib.sha256()
            for chunk in chunks:
                digest.update(chunk)

        def mem_write(fsync: bool) -> Callable[[], None]:
            def run() -> None:
                target = work / "mem"
                with open(target, "wb") as handle:
                    for chunk in chunks:
                        handle.write(chunk)
                    handle.flush()
                    if fsync:
                        os.fsync(handle.fileno())
                target.unlink()
            return run

        def mem_zstd(multi: bool, data: list[bytes] = chunks) -> Callable[[], None]:
            def run() -> None:
                import zstandard

                compressor = engine_backups.zstd_compressor() if multi else \
                    zstandard.ZstdCompressor(level=3).compressobj()
                for chunk in data:
                    compressor.compress(chunk)
                compressor.flush()
            return run

        text = _compressible(16 << 20)
        texts = [text[i % 16 << 20:(i % 16 + 1) << 20] for i in range(SIZE_MIB)]

        rows += [
            measure("in memory: sha256", mem_sha, None),
            measure("in memory: file write (page cache)", mem_write(False), None),
            measure("in memory: file write + fsync", mem_write(True), None),
            measure("in memory: zstd level 3, one thread", mem_zstd(False), None),
            measure("in memory: zstd level 3, multithreaded", mem_zstd(True), None),
            measure("in memory, compressible (Python sources): zstd level 3, one thread",
                    mem_zstd(False, texts), None),
            measure("in memory, compressible (Python sources): zstd level 3, multithreaded",
                    mem_zstd(True, texts), None),
        ]
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        print(machine_summary())
        print(f"{SIZE_MIB} MiB of random data (incompressible); load: {load}\n")
        print(table(["stage", "wall s", "MiB/s", "this process CPU s", "dockerd CPU s",
                     "CPU / wall"], rows))
    finally:
        container.remove(force=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
