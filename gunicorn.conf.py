"""gunicorn settings for the Dockyard API (the reasons are in docs/operations.md)."""

import logging
import multiprocessing
import os
import shutil
from pathlib import Path

from gunicorn import glogging

from app.core.logs import gunicorn_logconfig


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _cores() -> int:
    # The CPUs this process may run on (a container's cpuset), not every CPU of the machine.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return multiprocessing.cpu_count()


bind = os.environ.get("DOCKYARD_BIND") or "127.0.0.1:8000"
# gthread: views mostly wait on Redis (long-polls, SSE, queries), so threads are cheap
# concurrency; processes give CPU parallelism.
worker_class = "gthread"
# One process per core: the views spend their time waiting on Redis, which the threads
# overlap, so a second process per core bought no throughput and cost ~15-20 MiB of private
# pages each once requests touch the shared objects (docs/benchmarks.md, issue 17). At least
# two, so one worker's restart never leaves the API without a process answering.
workers = _env_int("DOCKYARD_API_WORKERS", max(2, _cores()))
threads = _env_int("DOCKYARD_API_THREADS", 16)
# SO_REUSEPORT: each worker listens on a socket of its own and the kernel spreads new
# connections evenly over them. With one shared socket whichever worker wakes first accepts,
# so a client's pool of keep-alive connections can land mostly on one process (56 of 64
# seen), which then saturates its core while the other idles (docs/benchmarks.md). The
# master then binds nothing itself: ``on_starting`` refuses an address somebody already
# listens on, as a shared socket's bind would (two APIs must not split one port unnoticed),
# and keeps one shared socket for a unix socket (each worker would re-create the path).
reuse_port = os.environ.get("DOCKYARD_API_REUSE_PORT", "1") == "1"
# Long enough for ?wait=60 and streamed downloads; the gthread heartbeat is independent.
timeout = 120
# SIGTERM: stop accepting, let in-flight requests finish for this long, then exit.
graceful_timeout = _env_int("DOCKYARD_GRACEFUL_TIMEOUT", 30)
keepalive = 5
# X-Forwarded-* is trusted only from these peers (the TLS proxy in front of the API).
forwarded_allow_ips = os.environ.get("DOCKYARD_FORWARDED_ALLOW_IPS") or "127.0.0.1,::1"
# The worker heartbeat file on tmpfs: on a container's overlay filesystem a slow disk
# stalls it and the master kills healthy workers. gunicorn opens it with mkstemp and
# unlinks it at once, so a shared folder is safe here.
_SHM = "/dev/shm"  # noqa: S108 (see above)
worker_tmp_dir = _SHM if os.path.isdir(_SHM) else None
# gunicorn's own lines and the app's go through one handler: JSON lines (or text with
# DOCKYARD_LOG_FORMAT=text), request ids attached, secrets redacted. Access lines are
# written only when DOCKYARD_ACCESS_LOG is set.
accesslog = os.environ.get("DOCKYARD_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("DOCKYARD_LOG_LEVEL") or "info"
logconfig_dict = gunicorn_logconfig()
if not accesslog:
    logconfig_dict["loggers"]["gunicorn.access"]["level"] = "WARNING"


class QuietAccessLogger(glogging.Logger):
    """gunicorn's logger, minus the access-log atoms when nobody would see the line.

    With ``logconfig_dict`` set gunicorn builds every request's atoms (a dict of ~20
    formatted values) and only then hands them to a logger that drops them at WARNING: a
    few percent of the API's CPU per submission (docs/benchmarks.md).
    """

    def access(self, resp, req, environ, request_time):
        if not self.access_log.isEnabledFor(logging.INFO):
            return
        super().access(resp, req, environ, request_time)


logger_class = QuietAccessLogger


def _metrics_root() -> Path:
    from app.core.config import Settings

    return Settings().state_dir / "metrics"


def _prepare_metrics_dir() -> None:
    """Give this master's workers a fresh metrics folder, shared by them only.

    Each worker writes its own files there (prometheus_client multiprocess mode) and
    /metrics sums them, so the figures add up whichever worker answers the scrape. This runs
    when the master reads this file, before it preloads the app: prometheus_client picks
    its multiprocess mode when it is first imported. A reload (HUP) keeps the folder.
    """
    if os.environ.get("_DOCKYARD_METRICS_MASTER") == str(os.getpid()):
        return
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        root = _metrics_root()
        root.mkdir(parents=True, exist_ok=True)
        for old in root.glob("gunicorn-*"):
            pid = old.name.removeprefix("gunicorn-")
            if not pid.isdigit() or not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(root / f"gunicorn-{os.getpid()}")
    os.environ["_DOCKYARD_METRICS_MASTER"] = str(os.getpid())
    from app.ops.metrics import reset_multiprocess_dir

    reset_multiprocess_dir(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

# gunicorn 27 opens a control socket at ~/.gunicorn/gunicorn.ctl by default; several
# masters on one machine (make run, test stacks, benchmarks) would take over each other's.
# Dockyard does not use it.
control_socket_disable = True


# The master imports the app once and the workers share its pages copy-on-write (about
# 50 MiB less per worker). What must not be shared across the fork is reset in the child:
# Redis pools (app/core/store.py, app/runtime.py), Celery's broker pool (app/jobs/celery.py), metric
# buffers (app/ops/metrics.py). The signing key is read-only and may be shared.
preload_app = True
_prepare_metrics_dir()


def when_ready(server):
    """Load, once in the master, what every worker would otherwise load on its first request."""
    from app.jobs.celery import load_before_fork
    from app.runtime import runtime

    load_before_fork(runtime().celery)


def pre_fork(server, worker):
    """Freeze what the master loaded, so no worker's collector writes to the shared pages."""
    import gc

    gc.freeze()


def post_worker_init(worker):
    """Move the loaded app out of the garbage collector's reach.

    Everything imported at start-up lives as long as the worker; freezing it keeps the
    collector from walking it again and again under load (see docs/benchmarks.md).
    """
    import gc

    gc.freeze()



def on_starting(server):
    """With ``reuse_port``: a unix socket shared as before, a taken address refused (above)."""
    if not server.cfg.reuse_port:
        return
    addresses = server.cfg.bind
    if any(not _is_tcp(address) for address in addresses):
        server.cfg.set("reuse_port", False)
        return
    for address in addresses:
        _refuse_taken(address)


def _is_tcp(address: str) -> bool:
    return not address.startswith(("unix:", "fd://")) and ":" in address


def _refuse_taken(address: str) -> None:
    import socket

    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 (only probed, then closed)
    for family, kind, proto, _name, sockaddr in socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                raise RuntimeError(f"cannot listen on {address}: {exc.strerror}") from None
