"""The bare reference endpoint for bench/submit.py: Flask + one Redis write + Celery send_task.

It is what a job submission costs with nothing else: no authentication, validation,
policy, lane check or response schema. bench/submit.py serves it with gunicorn and the
same gunicorn.conf.py as Dockyard (DOCKYARD_BIND points it at another port):

    DOCKYARD_BIND=127.0.0.1:8001 .venv/bin/gunicorn -c gunicorn.conf.py bench.reference_app:app

The task goes to a queue no worker consumes (``bench.reference`` by default); submit.py
deletes it, and the ``bench:ref:*`` keys, afterwards.
"""

from __future__ import annotations

import os
import uuid

import redis
from celery import Celery
from flask import Flask, jsonify

from app.core.config import _with_password, secret_from_env

REDIS_URL = os.environ.get("DOCKYARD_REDIS_URL", "redis://127.0.0.1:6379/0")
# The stack's password (DOCKYARD_REDIS_PASSWORD or its _FILE), added as Dockyard adds it.
if secret_from_env("DOCKYARD_REDIS_PASSWORD"):
    REDIS_URL = _with_password(REDIS_URL, secret_from_env("DOCKYARD_REDIS_PASSWORD"))
QUEUE = os.environ.get("DOCKYARD_BENCH_REF_QUEUE", "bench.reference")
KEY_PREFIX = "bench:ref:"

# gunicorn imports this module in each worker after the fork, so each process has its own pool.
store = redis.Redis.from_url(REDIS_URL, decode_responses=True, max_connections=256)
celery = Celery("reference", broker=REDIS_URL)
celery.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                   broker_pool_limit=64, broker_connection_retry_on_startup=True)

app = Flask("reference")


@app.post("/submit")
def submit():
    job_id = uuid.uuid4().hex
    store.set(KEY_PREFIX + job_id, "queued", ex=3600)
    celery.send_task("bench.noop", args=[job_id], queue=QUEUE, task_id=job_id)
    return jsonify(id=job_id, state="queued"), 202


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")
