"""Backup of a container with a 1 GiB filesystem through Dockyard vs `docker export -o FILE`.

A busybox container writes 1 GiB of random data (incompressible: the worst case for time,
and zstd cannot shrink it) into its filesystem. Each round times, on the same engine and the
same disk: `docker export -o FILE`; the same followed by an fsync of FILE (Dockyard fsyncs
every part before publishing, the CLI does not); and a Dockyard backup (`POST
/hosts/local/containers/{ref}/backups`, compression none, timed from the request until the
job is final). While the backup runs, VmRSS of the ops worker's pool processes is sampled
every 20 ms. A zstd backup is then timed once for throughput and size.

The benchmark starts its own private stack (API + workers, its own redis-server and state
folder) so it measures this code, not whatever `make run` started earlier.

Run: `source .state/run/env && .venv/bin/python -m bench.backup`.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import docker
import requests

from bench.common import (
    ROOT,
    TEST_IMAGE,
    docker_host,
    exit_on_sigterm,
    machine_summary,
    redis_password,
    table,
    verdict,
    wait_quiet,
    with_redis_password,
)
from bench.figures import record
from bench.streams import RssSampler
from tests.support.stack import Stack, free_port

SIZE_MIB = int(os.environ.get("DOCKYARD_BENCH_BACKUP_MIB", "1024"))
ROUNDS = int(os.environ.get("DOCKYARD_BENCH_BACKUP_ROUNDS", "3"))
QUIET_LIMIT = float(os.environ.get("DOCKYARD_BENCH_QUIET_LIMIT", "600"))
NAME = "dy-bench-backup"
TOKEN = "dy_bench-backup-" + uuid.uuid4().hex


def private_redis(state: Path) -> tuple[subprocess.Popen, str]:
    """A redis-server of the benchmark's own (no persistence), so no shared database is touched.

    It takes the stack's password (``DOCKYARD_REDIS_PASSWORD[_FILE]``, which the private
    stack inherits and adds to the URL), as the stack's own Redis does; the password goes
    to redis-server on its stdin, never on a command line. Answers the URL without it.
    """
    port = free_port()
    password = redis_password()
    config = f"port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {state}\n"
    if password:
        config += f"requirepass \"{password}\"\n"
    proc = subprocess.Popen(["redis-server", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    proc.stdin.write(config.encode())
    proc.stdin.close()
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    for _ in range(100):
        try:
            redis.Redis.from_url(with_redis_password(url)).ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    else:
        sys.exit(f"the benchmark's redis-server on port {port} did not answer")
    return proc, url


def private_stack(state: Path, redis_url: str) -> Stack:
    (state / "binds").mkdir(parents=True)
    env = {**os.environ, "DOCKYARD_REDIS_URL": redis_url, "DOCKYARD_STATE_DIR": str(state),
           "DOCKYARD_SECRET_KEY": "bench-backup-secret", "DOCKYARD_ADMIN_TOKEN": TOKEN,
           "DOCKYARD_BIND_ROOTS": str(state / "binds"),
           "DOCKYARD_LOCAL_ENGINE": docker_host(), "DOCKYARD_TOKEN_CACHE_SECONDS": "0"}
    env.pop("DOCKYARD_BACKUP_DIR", None)
    return Stack(env, state / "log")


def timed_cli(target: Path, fsync: bool) -> float:
    target.unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run(["docker", "export", "-o", str(target), NAME], check=True)
    if fsync:
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    seconds = time.perf_counter() - started
    target.unlink()
    return seconds


def timed_backup(session: requests.Session, base: str, compression: str) -> tuple[float, dict]:
    started = time.perf_counter()
    response = session.post(f"{base}/hosts/local/containers/{NAME}/backups",
                            json={"compression": compression})
    response.raise_for_status()
    job_id = response.json()["id"]
    while True:
        job = session.get(f"{base}/jobs/{job_id}", params={"wait": 60}).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
    seconds = time.perf_counter() - started
    if job["state"] != "succeeded":
        sys.exit(f"backup failed: {job['error']}")
    return seconds, job["result"]


def main() -> None:
    exit_on_sigterm()
    client = docker.DockerClient(base_url=docker_host())
    state = ROOT / ".state" / "bench-backup"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    redis_proc, redis_url = private_redis(state)
    stack = private_stack(state, redis_url)
    try:
        stack.start()
        container = client.containers.run(
            TEST_IMAGE, ["sh", "-c", f"dd if=/dev/urandom of=/big bs=1M count={SIZE_MIB} "
                                     "2>/dev/null; sleep 3600"],
            name=NAME, detach=True, labels={"dockyard.bench": "backup"})
        try:
            measure(stack, container, state)
        finally:
            container.remove(force=True)
    finally:
        stack.stop()
        redis_proc.terminate()
        redis_proc.wait(20)
        shutil.rmtree(state / "backups", ignore_errors=True)


def measure(stack: Stack, container, state: Path) -> None:
    base = stack.url + "/api/v1"
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    while container.exec_run(["sh", "-c", f"test $(stat -c %s /big) -eq {SIZE_MIB << 20}"]
                             ).exit_code:
        time.sleep(0.5)
    pool = [int(p) for p in subprocess.run(
        ["pgrep", "-P", str(stack.procs["worker-ops"].pid)], capture_output=True,
        text=True).stdout.split()]
    cli, cli_sync, api, peaks, baselines = [], [], [], [], []
    size = 0
    quiet = True
    target = state / "cli-export.tar"
    timed_backup(session, base, "none")  # warm-up: imports, engine client, page cache
    for round_no in range(ROUNDS):
        quiet &= wait_quiet(limit=QUIET_LIMIT)
        cli.append(timed_cli(target, fsync=False))
        cli_sync.append(timed_cli(target, fsync=True))
        with RssSampler({"ops": pool}) as sampler:
            seconds, manifest = timed_backup(session, base, "none")
        api.append(seconds)
        peaks.append(sampler.peak["ops"] / 1024)
        baselines.append(sampler.baseline["ops"] / 1024)
        size = next(p["size"] for p in manifest["parts"] if p["kind"] == "rootfs")
        session.delete(f"{base}/backups/{manifest['id']}")
        print(f"  round {round_no + 1}/{ROUNDS}: cli {cli[-1]:.2f}s, cli+fsync "
              f"{cli_sync[-1]:.2f}s, dockyard {api[-1]:.2f}s, peak RSS {peaks[-1]:.0f} MiB",
              file=sys.stderr, flush=True)
    quiet &= wait_quiet(limit=QUIET_LIMIT)
    with RssSampler({"ops": pool}) as sampler:
        zstd_seconds, zstd_manifest = timed_backup(session, base, "zstd")
    zstd_part = next(p for p in zstd_manifest["parts"] if p["kind"] == "rootfs")
    mib = size / 2**20
    cli_tp, sync_tp = mib / statistics.median(cli), mib / statistics.median(cli_sync)
    api_tp = mib / statistics.median(api)
    peak = max([*peaks, sampler.peak["ops"] / 1024])
    print(machine_summary())
    print(f"export size {mib:.0f} MiB; {ROUNDS} rounds, medians"
          + ("" if quiet else " (some rounds overlapped a pytest run)") + "\n")
    print(table(["method", "median time", "throughput", "Dockyard / method"], [
        ["`docker export -o FILE`", f"{statistics.median(cli):.2f} s", f"{cli_tp:.0f} MiB/s",
         f"{api_tp / cli_tp:.2f}x"],
        ["`docker export -o FILE` + fsync", f"{statistics.median(cli_sync):.2f} s",
         f"{sync_tp:.0f} MiB/s", f"{api_tp / sync_tp:.2f}x"],
        ["Dockyard backup, compression none", f"{statistics.median(api):.2f} s",
         f"{api_tp:.0f} MiB/s", "1.00x"],
        ["Dockyard backup, compression zstd", f"{zstd_seconds:.2f} s",
         f"{mib / zstd_seconds:.0f} MiB/s",
         f"stored {zstd_part['size'] / 2**20:.0f} MiB of {zstd_part['uncompressed_size'] / 2**20:.0f}"],
    ]))
    vs_cli, vs_sync = api_tp / cli_tp, api_tp / sync_tp
    print()
    print(table(["check", "value", "target", "verdict"], [
        ["backup none / `docker export -o`", f"{vs_cli:.2f}x", "≥ 0.95x", verdict(vs_cli >= 0.95)],
        ["backup none / `docker export -o` + fsync", f"{vs_sync:.2f}x", "≥ 1.00x",
         verdict(vs_sync >= 1.0)],
        ["peak ops-worker RSS", f"{peak:.0f} MiB (baseline {max(baselines):.0f})", "≤ 100 MiB",
         verdict(peak <= 100)],
    ]))
    print()
    record("backup", f"backup none / `docker export -o` ({mib:.0f} MiB, median of {ROUNDS})", vs_cli,
           f"{vs_cli:.2f}x", "≥ 0.95x", vs_cli >= 0.95, "bench/backup.py")
    record("backup_fsync", "backup none / `docker export -o` + fsync", vs_sync, f"{vs_sync:.2f}x",
           "≥ 1.00x", vs_sync >= 1.0, "bench/backup.py")
    record("backup_rss", "peak ops-worker RSS during the backup", peak, f"{peak:.0f} MiB",
           "≤ 100 MiB", peak <= 100, "bench/backup.py")
    session.delete(f"{base}/backups/{zstd_manifest['id']}")


if __name__ == "__main__":
    main()
