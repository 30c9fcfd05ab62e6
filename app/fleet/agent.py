"""`dockyard-agent --host NAME`: the workers of one host, run on that host.

An agent consumes only ``host.NAME.ops`` and ``host.NAME.query`` and talks to the local
engine socket, so the engine is never exposed on the network; the host needs only
outbound access to Redis. It runs two Celery workers (operations: prefork, one job per
process; reads: threads) and stops both on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


# Gossip, mingle and worker heartbeats are pub/sub on shared keys: an agent's login has none.
_QUIET = ("--without-gossip", "--without-mingle", "--without-heartbeat")


def worker_env(environ: dict[str, str], host: str, engine: str, pool_size: int) -> dict[str, str]:
    """The workers' environment: the public verify key instead of DOCKYARD_SECRET_KEY.

    An agent signs nothing and unseals nothing with the fleet's key, so its workers never
    hold it (given one, the agent derives the public key from it and drops it).
    """
    from urllib.parse import urlsplit

    from app.core.config import secret_from_env
    from app.security import signing

    env = {**environ, "DOCKYARD_AGENT_HOST": host, "DOCKYARD_AGENT_ENGINE_URL": engine,
           "DOCKYARD_ENGINE_POOL_SIZE": str(pool_size)}
    secret = secret_from_env("DOCKYARD_SECRET_KEY") if (
        env.get("DOCKYARD_SECRET_KEY") or env.get("DOCKYARD_SECRET_KEY_FILE")) else ""
    env.pop("DOCKYARD_SECRET_KEY", None)
    env.pop("DOCKYARD_SECRET_KEY_FILE", None)
    if secret and not env.get("DOCKYARD_TASK_VERIFY_KEY"):
        env["DOCKYARD_TASK_VERIFY_KEY"] = signing.encode_verify_key(
            signing.signing_key(secret).public_key())
    if urlsplit(env.get("DOCKYARD_REDIS_URL", "")).password:
        # The URL carries the agent's own login: the shared data password is not for it.
        env.pop("DOCKYARD_REDIS_PASSWORD", None)
        env.pop("DOCKYARD_REDIS_PASSWORD_FILE", None)
    return env


def worker_commands(host: str, ops_concurrency: int, query_concurrency: int) -> list[list[str]]:
    celery = [sys.executable, "-m", "app.celery_cli", "-A", "app.celery_app:celery", "worker"]
    return [
        [*celery, "-Q", f"host.{host}.ops", "-n", f"agent-ops.{host}@%h", "-P", "prefork",
         "-c", str(ops_concurrency), "--prefetch-multiplier", "1", "-l", "INFO", *_QUIET],
        [*celery, "-Q", f"host.{host}.query", "-n", f"agent-query.{host}@%h", "-P", "threads",
         "-c", str(query_concurrency), "-l", "INFO", *_QUIET],
    ]


def _wait_for_lane(queue: str, worker: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Wait until ``worker`` beats for ``queue``; False if it died first.

    After ``timeout`` with the worker alive but no beat seen, go on anyway (the lane check
    itself may be what fails): the workers' own logs then say why.
    """
    from app.jobs.dispatch import lane_alive

    deadline = time.monotonic() + timeout
    while worker.poll() is None and time.monotonic() < deadline:
        try:
            if lane_alive(queue):
                return True
        except Exception as exc:  # Redis not reachable yet: keep waiting
            print(f"dockyard-agent: waiting for the {queue} lane: {exc}", file=sys.stderr)
        time.sleep(0.5)
    return worker.poll() is None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dockyard-agent", description=__doc__.split("\n")[0])
    parser.add_argument("--host", required=True, help="the Dockyard host name this agent serves")
    parser.add_argument("--engine", default=os.environ.get("DOCKYARD_AGENT_ENGINE_URL",
                                                           "unix:///var/run/docker.sock"),
                        help="the local engine (default unix:///var/run/docker.sock)")
    parser.add_argument("--ops-concurrency", type=int, default=2)
    parser.add_argument("--query-concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    if "DOCKYARD_REDIS_URL" not in os.environ:
        parser.error("set DOCKYARD_REDIS_URL to the agent's Redis URL (agent_credentials.redis_url)")
    if not (os.environ.get("DOCKYARD_TASK_VERIFY_KEY") or os.environ.get("DOCKYARD_SECRET_KEY")):
        # Without a key the workers could verify nothing, and refuse to start.
        parser.error("set DOCKYARD_TASK_VERIFY_KEY (printed by `dockyard-admin task-verify-key`) "
                     "or DOCKYARD_SECRET_KEY")
    env = worker_env(dict(os.environ), args.host, args.engine, max(args.query_concurrency, 2))
    ops, query = worker_commands(args.host, args.ops_concurrency, args.query_concurrency)
    # Reads start only once the job lane beats: a host must not answer reads while its
    # jobs are refused with 503 "no live worker".
    children = [subprocess.Popen(ops, cwd=ROOT, env=env)]
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if _wait_for_lane(f"host.{args.host}.ops", children[0]) and not stopping:
        children.append(subprocess.Popen(query, cwd=ROOT, env=env))
    # If one worker dies the agent is not whole: stop the other and exit non-zero, so a
    # supervisor (systemd, a container runtime) restarts the pair.
    while all(child.poll() is None for child in children):
        time.sleep(0.5)
    stop(signal.SIGTERM, None)
    codes = [child.wait() for child in children]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
