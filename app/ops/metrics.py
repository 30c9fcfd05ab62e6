"""Prometheus metrics: request latency from every API process, job and engine figures from Redis."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from app.core.store import PREFIX, get_redis, get_settings

if TYPE_CHECKING:
    from flask import Flask, Response

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
JOB_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0)
ENGINE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Workers run in other processes and containers than the API, so what they measure is kept
# in Redis (one pipeline per task) and read back at scrape time.
JOBS_KEY = PREFIX + "metrics:jobs"
JOB_SECONDS_KEY = PREFIX + "metrics:job_seconds"
ENGINE_SECONDS_KEY = PREFIX + "metrics:engine_seconds"
_SEP = "|"
_FLUSH_EVERY_SECONDS = 1.0
_MAX_BUFFERED = 50_000

# Celery keeps prioritised messages of a queue in sibling lists (kombu's priority steps).
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


# -- API side: per-process histograms summed over gunicorn's workers -----------------------

def multiprocess_dir() -> Path:
    """Where the API processes keep their metric files.

    gunicorn.conf.py sets (and empties) it when the master starts; a process started
    without it (a dev server, a test client) uses ``<state_dir>/metrics/api``.
    """
    configured = os.environ.get(MULTIPROC_ENV)
    path = Path(configured) if configured else get_settings().state_dir / "metrics" / "api"
    if not configured:
        # Must be in the environment before prometheus_client is first imported.
        os.environ[MULTIPROC_ENV] = str(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def reset_multiprocess_dir(path: Path) -> None:
    """Empty ``path`` of metric files left by earlier runs (called once, by the gunicorn master)."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


class _HttpMetrics:
    def __init__(self) -> None:
        multiprocess_dir()
        from prometheus_client import Histogram

        self.duration = Histogram(
            "dockyard_http_request_duration_seconds",
            "API request latency by route (URL rule), method and status; _count is the request count.",
            ("route", "method", "status"), buckets=HTTP_BUCKETS, registry=None)


@functools.cache
def _http_metrics() -> _HttpMetrics:
    return _HttpMetrics()


def init_app(app: Flask) -> None:
    """Time every request; register first so the timing includes authentication."""
    # Flask is imported here, not at the top: workers load this module and never Flask.
    from flask import g, request

    _http_metrics()

    def start_timer() -> None:
        g.metrics_started = time.perf_counter()

    def observe_request(response: Response) -> Response:
        started = g.get("metrics_started")
        if started is not None:
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            _http_metrics().duration.labels(route, request.method, str(response.status_code)) \
                .observe(time.perf_counter() - started)
        return response

    app.before_request(start_timer)
    app.after_request(observe_request)


# -- worker side: jobs and engine calls, kept in Redis --------------------------------------

_engine_calls: list[tuple[str, float]] = []
_engine_lock = threading.Lock()
_last_flush = 0.0


def watch_engine_client(client: Any, host: str) -> None:
    """Time every HTTP call ``client`` makes to its engine (time to response headers)."""
    api = getattr(client, "api", None)
    if api is None or getattr(api, "_dockyard_metrics_host", None) == host:
        return
    api._dockyard_metrics_host = host
    api.hooks["response"].append(functools.partial(_on_engine_response, host))


def _on_engine_response(host: str, response: Any, *_: Any, **__: Any) -> None:
    elapsed = getattr(response, "elapsed", None)
    if elapsed is None:
        return
    with _engine_lock:
        if len(_engine_calls) < _MAX_BUFFERED:
            _engine_calls.append((host, elapsed.total_seconds()))


def _bucket_field(label: str, seconds: float, buckets: tuple[float, ...]) -> str:
    for index, bound in enumerate(buckets):
        if seconds <= bound:
            return f"{label}{_SEP}{index}"
    return f"{label}{_SEP}{len(buckets)}"


def _observe(pipe: redis.client.Pipeline, key: str, label: str, seconds: float,
             buckets: tuple[float, ...]) -> None:
    pipe.hincrby(key, _bucket_field(label, seconds, buckets), 1)
    pipe.hincrbyfloat(key, f"{label}{_SEP}sum", seconds)
    pipe.hincrby(key, f"{label}{_SEP}count", 1)


def _drain_engine_calls(pipe: redis.client.Pipeline) -> None:
    global _last_flush
    with _engine_lock:
        calls = _engine_calls[:]
        _engine_calls.clear()
        _last_flush = time.monotonic()
    for host, seconds in calls:
        _observe(pipe, ENGINE_SECONDS_KEY, host, seconds, ENGINE_BUCKETS)


def record_job(kind: str, state: str, seconds: float) -> None:
    """Count a job that reached a final state and its run time (never raises)."""
    if get_settings().agent_host:
        return  # an agent's login reaches no shared key: agents write no metrics
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.hincrby(JOBS_KEY, f"{kind}{_SEP}{state}", 1)
        _observe(pipe, JOB_SECONDS_KEY, kind, seconds, JOB_BUCKETS)
        _drain_engine_calls(pipe)
        pipe.execute()
    except redis.exceptions.RedisError:
        logger.warning("could not record metrics of a %s job", kind, exc_info=True)


def flush_engine_calls(force: bool = False) -> None:
    """Write buffered engine timings to Redis, at most once a second unless ``force`` (never raises)."""
    if not _engine_calls or (not force and time.monotonic() - _last_flush < _FLUSH_EVERY_SECONDS):
        return
    if get_settings().agent_host:
        with _engine_lock:
            _engine_calls.clear()
        return
    try:
        pipe = get_redis().pipeline(transaction=False)
        _drain_engine_calls(pipe)
        pipe.execute()
    except redis.exceptions.RedisError:
        logger.warning("could not record engine call metrics", exc_info=True)


def _forget_after_fork() -> None:
    global _engine_lock
    _engine_calls.clear()
    _engine_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


# -- scrape ---------------------------------------------------------------------------------

def queue_depth(client: redis.Redis, queue: str) -> int:
    """Messages waiting in a Celery queue (all its priority lists)."""
    pipe = client.pipeline(transaction=False)
    for suffix in _PRIORITY_SUFFIXES:
        pipe.llen(queue + suffix)
    return sum(pipe.execute())


def _split(field: str) -> tuple[str, str]:
    label, _, rest = field.rpartition(_SEP)
    return label, rest


def _histograms(raw: dict[str, str], buckets: tuple[float, ...]) -> Iterator[tuple[str, list, float]]:
    """(label, [(le, cumulative count)…], sum) from a hash of per-bucket counts."""
    by_label: dict[str, dict[str, float]] = {}
    for field, value in raw.items():
        label, part = _split(field)
        by_label.setdefault(label, {})[part] = float(value)
    for label, parts in sorted(by_label.items()):
        cumulative, rows = 0.0, []
        for index, bound in enumerate(buckets):
            cumulative += parts.get(str(index), 0.0)
            rows.append((_le(bound), cumulative))
        rows.append(("+Inf", parts.get("count", cumulative + parts.get(str(len(buckets)), 0.0))))
        yield label, rows, parts.get("sum", 0.0)


def _le(bound: float) -> str:
    return repr(float(bound))


class RedisCollector:
    """Jobs, job durations and engine latency (written by workers), queue depth, lane liveness."""

    def __init__(self, queues: Iterable[str]) -> None:
        self.queues = tuple(queues)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        from app.jobs.dispatch import lane_alive, lane_key

        up = GaugeMetricFamily("dockyard_redis_up", "1 if Redis answered this scrape.")
        client = get_redis()
        try:
            pipe = client.pipeline(transaction=False)
            pipe.hgetall(JOBS_KEY)
            pipe.hgetall(JOB_SECONDS_KEY)
            pipe.hgetall(ENGINE_SECONDS_KEY)
            jobs, job_seconds, engine_seconds = pipe.execute()
            depths = {queue: queue_depth(client, queue) for queue in self.queues}
            now = time.time()
            workers = {queue: client.zcount(lane_key(queue), now, "+inf") for queue in self.queues}
            alive = {queue: lane_alive(queue) for queue in self.queues}
        except redis.exceptions.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        total = CounterMetricFamily("dockyard_jobs", "Jobs that reached a final state, by kind and state.",
                                    labels=("kind", "state"))
        for field, value in sorted(jobs.items()):
            total.add_metric(list(_split(field)), float(value))
        yield total

        duration = HistogramMetricFamily("dockyard_job_duration_seconds",
                                         "Run time of finished jobs in the worker, by kind.",
                                         labels=("kind",))
        for kind, rows, total_seconds in _histograms(job_seconds, JOB_BUCKETS):
            duration.add_metric([kind], rows, total_seconds)
        yield duration

        engine = HistogramMetricFamily("dockyard_engine_call_duration_seconds",
                                       "Docker engine API calls made by workers (time to response "
                                       "headers), by host.", labels=("host",))
        for host, rows, total_seconds in _histograms(engine_seconds, ENGINE_BUCKETS):
            engine.add_metric([host], rows, total_seconds)
        yield engine

        depth = GaugeMetricFamily("dockyard_queue_depth", "Messages waiting in each Celery queue.",
                                  labels=("queue",))
        lane_up = GaugeMetricFamily("dockyard_lane_up",
                                    "1 if a live worker consumes the queue (lane heartbeat).",
                                    labels=("queue",))
        lane_workers = GaugeMetricFamily("dockyard_lane_workers",
                                         "Workers with a fresh heartbeat on the queue.",
                                         labels=("queue",))
        for queue in self.queues:
            depth.add_metric([queue], depths[queue])
            lane_up.add_metric([queue], 1 if alive[queue] else 0)
            lane_workers.add_metric([queue], workers[queue])
        yield depth
        yield lane_up
        yield lane_workers


def render(queues: Iterable[str]) -> tuple[bytes, str]:
    """The exposition text for a scrape and its content type."""
    path = multiprocess_dir()
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=str(path))
    registry.register(RedisCollector(queues))
    return generate_latest(registry), CONTENT_TYPE_LATEST
