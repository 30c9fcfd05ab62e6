"""Liveness and readiness probes."""

from __future__ import annotations

import logging

import redis
import redis.sentinel
from flask import Blueprint, Response, jsonify, request

from app.core.store import get_redis, is_loopback_url, redis_is_open
from app.fleet.hosts import queues_for
from app.jobs.dispatch import lane_alive
from app.ops import metrics
from app.runtime import runtime

logger = logging.getLogger(__name__)
blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz():
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


@blp.get("/readyz")
def readyz():
    """Readiness: Redis answers and every route has a live worker on both lanes."""
    checks: dict[str, object] = {}
    settings = runtime().settings
    try:
        get_redis().ping()
        checks["redis"] = True
        open_redis = redis_is_open(get_redis())
    except Exception as exc:
        checks["redis"] = False
        logger.warning("readyz: Redis unavailable: %s: %s", type(exc).__name__, exc)
        return jsonify({"status": "unavailable", "checks": checks,
                        "reason": _redis_reason(exc, settings)}), 503
    # Redis holds the tokens, the queues and the job records: one that answers anybody is
    # a control plane open to anybody on its network.
    checks["redis_auth"] = not open_redis
    if open_redis and not (settings.dev_open_redis and not settings.redis_sentinels
                           and is_loopback_url(settings.redis_url)):
        return jsonify({"status": "unavailable", "checks": checks,
                        "reason": "Redis answers without authentication: give it a password "
                                  "(requirepass or ACL users) and set DOCKYARD_REDIS_PASSWORD"
                                  "[_FILE]"}), 503
    routes = {}
    for queue in ("engine.ops", "engine.query"):
        routes[queue] = lane_alive(queue)
    for record in runtime().hosts.list():
        if record.get("route") == "agent":
            for queue in queues_for(record):
                routes[queue] = lane_alive(queue)
    checks["lanes"] = routes
    ready = checks["redis"] and all(routes.values())
    return jsonify({"status": "ready" if ready else "degraded", "checks": checks}), \
        200 if ready else 503


def _redis_reason(exc: Exception, settings) -> str:
    """What is wrong with Redis, in words an unauthenticated prober may read: no address,
    no server message (those go to the log)."""
    if isinstance(exc, redis.sentinel.MasterNotFoundError):
        return (f"no sentinel answers for master '{settings.redis_master}' "
                "(DOCKYARD_REDIS_MASTER, DOCKYARD_REDIS_SENTINELS)")
    if isinstance(exc, redis.AuthenticationError):
        return "Redis refused the password (DOCKYARD_REDIS_PASSWORD)"
    if isinstance(exc, redis.ConnectionError):
        return "Redis does not answer" + (" (nor do its sentinels)" if settings.redis_sentinels
                                          else "")
    return f"Redis: {type(exc).__name__}"


@blp.get("/metrics")
def prometheus_metrics():
    """Prometheus metrics: requests summed over every API process, jobs, queues, lanes."""
    if not runtime().settings.public_metrics:
        runtime().tokens.authenticate(request.headers.get("Authorization"))
    try:
        queues = _lanes()
    except Exception:  # Redis is down: the scrape still answers, with dockyard_redis_up 0
        queues = ["engine.ops", "engine.query"]
    body, content_type = metrics.render(queues)
    return Response(body, content_type=content_type)


def _lanes() -> list[str]:
    """The central lanes and those of every agent-routed host."""
    queues = ["engine.ops", "engine.query"]
    for record in runtime().hosts.list():
        if record.get("route") == "agent":
            queues.extend(queues_for(record))
    return queues
