"""An experiment config for `bench.submit --own-api --api-config`: Dockyard's gunicorn.conf.py
plus, per worker, GC accounting (logged every 10 s) and, with DOCKYARD_BENCH_GC_FREEZE=1,
``gc.freeze()`` once the app is loaded, so full collections skip the import-time heap."""

import gc
import logging
import os
import threading
import time
from pathlib import Path

exec(compile((Path(__file__).resolve().parent.parent / "gunicorn.conf.py").read_text(),  # noqa: S102
             "gunicorn.conf.py", "exec"))

_log = logging.getLogger("gunicorn.error")


def post_worker_init(worker):
    if os.environ.get("DOCKYARD_BENCH_GC_FREEZE") == "1":
        gc.collect()
        gc.freeze()
    stats = {"n": [0, 0, 0], "ms": [0.0, 0.0, 0.0], "max": [0.0, 0.0, 0.0]}
    started = {}

    def callback(phase, info):
        gen = info["generation"]
        if phase == "start":
            started[gen] = time.perf_counter()
        elif gen in started:
            took = (time.perf_counter() - started.pop(gen)) * 1000
            stats["n"][gen] += 1
            stats["ms"][gen] += took
            stats["max"][gen] = max(stats["max"][gen], took)

    gc.callbacks.append(callback)

    def report():
        while True:
            time.sleep(10)
            _log.info("gc pid=%s frozen=%s collections=%s total_ms=%s max_ms=%s", os.getpid(),
                      gc.get_freeze_count(), stats["n"], [round(v, 1) for v in stats["ms"]],
                      [round(v, 1) for v in stats["max"]])

    threading.Thread(target=report, daemon=True).start()
