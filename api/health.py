"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, jsonify

from app.dispatch import lane_alive
from app.hosts import queues_for
from app.runtime import runtime
from app.store import get_redis

blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz():
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


@blp.get("/readyz")
def readyz():
    """Readiness: Redis answers and every route has a live worker on both lanes."""
    checks: dict[str, object] = {}
    try:
        get_redis().ping()
        checks["redis"] = True
    except Exception:
        checks["redis"] = False
        return jsonify({"status": "unavailable", "checks": checks}), 503
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
