"""Experiment only (never deployed): Dockyard's WSGI app with proposed submission-path changes
applied by patching at import, to measure their gain before anyone edits app/ or api/.

Serve it with ``python -m bench.submit --own-api --api-app bench.experiment_app:app``.
``DOCKYARD_BENCH_EXPERIMENTS`` picks the changes (comma-separated; default all):

- ``host-cache``: HostStore.get answers from a per-process cache for 2 s (like the token
  cache), saving one Redis round trip (HGET dy:hosts) per request.
- ``lane-cache``: a live lane is remembered for 1 s per process, saving the ZCOUNT per
  request (heartbeats come every 5 s and live 15 s, so fail-fast is at most 1 s later).
- ``argsrepr``: submit_job passes argsrepr/kwargsrepr to send_task, so Celery does not
  saferepr() the arguments of every message (they are in the job record anyway).
- ``quiet-log``: the per-job "job … queued" INFO line (app.jobs.dispatch) is not emitted; the
  audit log already records every submission. Today each line costs a LogRecord, the
  redaction regexes and a formatted write.
- ``gc-freeze``: gc.freeze() once the app is loaded, so full collections skip the ~98k
  import-time objects (a full collection of them takes ~25 ms and stalls every thread).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from typing import Any

import app.jobs.dispatch as dispatch
from app.fleet.hosts import HostStore
from app.runtime import runtime
from wsgi import app

celery = runtime().celery  # the API's Celery app (wsgi serves only the Flask app)

ALL = "host-cache,lane-cache,argsrepr,quiet-log,gc-freeze"
EXPERIMENTS = {e.strip() for e in os.environ.get("DOCKYARD_BENCH_EXPERIMENTS", ALL).split(",")
               if e.strip()}
_lock = threading.Lock()

if "host-cache" in EXPERIMENTS:
    _hosts: dict[str, tuple[float, dict[str, Any]]] = {}
    _uncached_get = HostStore.get

    def _cached_get(self: HostStore, name: str) -> dict[str, Any]:
        now = time.monotonic()
        with _lock:
            hit = _hosts.get(name)
        if hit and hit[0] > now:
            return dict(hit[1])
        record = _uncached_get(self, name)
        with _lock:
            _hosts[name] = (now + 2.0, record)
        return dict(record)

    HostStore.get = _cached_get

if "lane-cache" in EXPERIMENTS:
    _lanes: dict[str, float] = {}
    _uncached_lane_alive = dispatch.lane_alive

    def _cached_lane_alive(queue: str) -> bool:
        now = time.monotonic()
        if _lanes.get(queue, 0.0) > now:
            return True
        alive = _uncached_lane_alive(queue)
        if alive:
            _lanes[queue] = now + 1.0
        return alive

    dispatch.lane_alive = _cached_lane_alive

if "argsrepr" in EXPERIMENTS:
    _send_task = celery.send_task

    def _send_task_without_repr(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("argsrepr", "")
        kwargs.setdefault("kwargsrepr", "")
        return _send_task(*args, **kwargs)

    celery.send_task = _send_task_without_repr

if "quiet-log" in EXPERIMENTS:
    logging.getLogger(dispatch.__name__).setLevel(logging.WARNING)

if "gc-freeze" in EXPERIMENTS:
    gc.collect()
    gc.freeze()

__all__ = ["app", "celery"]
