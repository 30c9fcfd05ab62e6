"""gunicorn settings for the Dockyard API (see README, "Operations")."""

import multiprocessing
import os

bind = os.environ.get("DOCKYARD_BIND", "127.0.0.1:8000")
# gthread: views mostly wait on Redis (long-polls, SSE, queries), so threads are cheap
# concurrency; processes give CPU parallelism.
worker_class = "gthread"
workers = int(os.environ.get("DOCKYARD_API_WORKERS", multiprocessing.cpu_count() * 2))
threads = int(os.environ.get("DOCKYARD_API_THREADS", 16))
# Long enough for ?wait=60 and streamed downloads; the gthread heartbeat is independent.
timeout = 120
graceful_timeout = 30
keepalive = 5
accesslog = os.environ.get("DOCKYARD_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("DOCKYARD_LOG_LEVEL", "info")
