"""A backup's own cost, without the job around it: CPU seconds per GiB and wall time against
`docker export -o FILE` (and + fsync) on the same container, in interleaved rounds.

A busybox container holds ``DOCKYARD_BENCH_BACKUP_MIB`` (default 1024) MiB of random data.
Each round runs, one after the other: `docker export -o FILE`; the same + fsync of FILE;
then, for each checkout in ``DOCKYARD_BENCH_CHECKOUTS`` (comma-separated folders, default
this one), ``back_up_container`` (compression none) in a fresh process with that checkout
on ``PYTHONPATH``, so two versions of the code are compared in the same run. For each:
wall seconds, the CPU seconds of the process (the CLI's or the backup's, all threads) and
of dockerd; for a backup also how long the publish (the download's sha256) took.

    source .state/run/env && .venv/bin/python -m bench.backup_inproc
    DOCKYARD_BENCH_CHECKOUTS=/work/main,$PWD .venv/bin/python -m bench.backup_inproc
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
_ULID = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _cpu(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def one(container: str, folder: Path) -> None:
    """Child: one backup of ``container`` into ``folder``; prints its figures as JSON."""
    import docker

    from app.backups import storage as storage_module
    from app.engine import backups

    publish_wall = [0.0]
    original = storage_module.LocalBackupStorage.publish

    def publish(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            publish_wall[0] += time.perf_counter() - started

    storage_module.LocalBackupStorage.publish = publish
    client = docker.DockerClient(base_url=os.environ["DOCKER_HOST"])
    client.api.inspect_container(container)  # connect first
    storage = storage_module.LocalBackupStorage(folder)
    backup_id = "01" + "".join(random.choice(_ULID) for _ in range(24))
    options = {"compression": "none", "consistency": "none", "include_volumes": True,
               "include_binds": False}
    wall, cpu = time.perf_counter(), _cpu()
    backups.back_up_container(client, container, storage, backup_id, options, host="local",
                              stall=60, progress=lambda *_: None, checkpoint=lambda: None)
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    shutil.rmtree(folder / backup_id, ignore_errors=True)
    print(json.dumps({"wall": wall, "cpu": cpu, "publish": publish_wall[0]}))


def main() -> int:
    import docker

    from bench.backup_path import cpu_of, dockerd_pid
    from bench.common import ROOT, TEST_IMAGE, docker_host, machine_summary, table

    size_mib = int(os.environ.get("DOCKYARD_BENCH_BACKUP_MIB", "1024"))
    rounds = int(os.environ.get("DOCKYARD_BENCH_BACKUP_ROUNDS", "4"))
    checkouts = [Path(p).resolve() for p in
                 os.environ.get("DOCKYARD_BENCH_CHECKOUTS", str(ROOT)).split(",") if p]
    client = docker.DockerClient(base_url=docker_host())
    engine = dockerd_pid()
    work = ROOT / ".state" / f"bench-backup-inproc-{os.getpid()}"
    work.mkdir(parents=True)
    name = f"dy-bench-inproc-{os.getpid()}"
    container = client.containers.run(
        TEST_IMAGE, ["sh", "-c", f"dd if=/dev/urandom of=/big bs=1M count={size_mib} "
                                 "2>/dev/null; touch /done; sleep 3600"],
        name=name, detach=True, labels={"dockyard.bench": "backup-inproc"})
    kinds = ["cli", "cli+fsync", *(f"backup {c}" for c in checkouts)]
    walls: dict[str, list[float]] = {k: [] for k in kinds}
    cpus: dict[str, list[float]] = {k: [] for k in kinds}
    publishes: dict[str, list[float]] = {k: [] for k in kinds}
    loads = []
    try:
        while container.exec_run(["test", "-f", "/done"]).exit_code:
            time.sleep(0.5)
        for round_no in range(rounds + 1):  # round 0 warms up and is not counted
            for kind in kinds:
                subprocess.run(["sync"], check=True)
                load = os.getloadavg()[0]
                dockerd = cpu_of(engine)
                if kind.startswith("cli"):
                    target = work / "cli.tar"
                    children, wall = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
                    subprocess.run(["docker", "export", "-o", str(target), name], check=True)
                    if kind == "cli+fsync":
                        fd = os.open(target, os.O_RDONLY)
                        os.fsync(fd)
                        os.close(fd)
                    wall = time.perf_counter() - wall
                    cpu, publish = _cpu(resource.RUSAGE_CHILDREN) - children, 0.0
                    target.unlink()
                else:
                    checkout = kind.removeprefix("backup ")
                    env = {**os.environ, "PYTHONPATH": checkout, "DOCKER_HOST": docker_host()}
                    out = subprocess.run([sys.executable, str(HERE), "--one", name,
                                          str(work / "backups")], env=env, cwd=checkout,
                                         check=True, capture_output=True, text=True).stdout
                    figures = json.loads(out.strip().splitlines()[-1])
                    wall, cpu, publish = figures["wall"], figures["cpu"], figures["publish"]
                dockerd = cpu_of(engine) - dockerd
                print(f"  round {round_no} {kind}: {wall:.2f} s, CPU {cpu:.2f} s, dockerd "
                      f"{dockerd:.2f} s, publish {publish:.2f} s, load {load:.1f}",
                      file=sys.stderr, flush=True)
                if round_no:
                    walls[kind].append(wall)
                    cpus[kind].append(cpu)
                    publishes[kind].append(publish)
                    loads.append(load)
    finally:
        container.remove(force=True)
        shutil.rmtree(work, ignore_errors=True)
    gib = size_mib / 1024
    cli = statistics.median(walls["cli"])
    cli_sync = statistics.median(walls["cli+fsync"])
    rows = []
    for kind in kinds:
        wall = statistics.median(walls[kind])
        rows.append([kind, f"{wall:.2f} s ({min(walls[kind]):.2f}-{max(walls[kind]):.2f})",
                     f"{statistics.median(cpus[kind]) / gib:.2f}",
                     f"{statistics.median(publishes[kind]):.2f} s" if kind.startswith("backup")
                     else "", f"{cli / wall:.2f}x", f"{cli_sync / wall:.2f}x"])
    print(machine_summary())
    print(f"{size_mib} MiB of random data, {rounds} rounds after a warm-up, medians (range); "
          f"load average at the starts {min(loads):.1f}-{max(loads):.1f}\n")
    print(table(["method", "wall", "CPU s/GiB (process)", "publish", "export / it",
                 "export+fsync / it"], rows))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        sys.path.pop(0)  # this script's folder: the checkout on PYTHONPATH is the one measured
        one(sys.argv[2], Path(sys.argv[3]))
    else:
        sys.exit(main())
