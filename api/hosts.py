"""/hosts: the engine inventory and engine-wide reads (info, version, df)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import principal, requires
from app import hosts as hostviews
from app.dispatch import lane_alive, run_query
from app.errors import DockyardError
from app.hosts import queues_for
from app.runtime import runtime
from schemas.hosts import (
    DiskUsageSchema,
    HostCreateSchema,
    HostDetailSchema,
    HostSchema,
    HostUpdateSchema,
)

blp = Blueprint("hosts", __name__, description="Docker hosts and engine-wide reads")


def host_record(name: str) -> dict[str, Any]:
    """A host the caller may use (scope was checked by ``requires``)."""
    return runtime().hosts.get(name)


def _with_lanes(record: dict[str, Any], status: dict[str, Any] | None) -> dict[str, Any]:
    view = hostviews.public_view(record, status)
    ops, query = queues_for(record)
    view["lanes_alive"] = {"ops": lane_alive(ops), "query": lane_alive(query)}
    return view


@blp.route("/hosts")
class Hosts(MethodView):
    @requires("viewer")
    @blp.response(200, HostSchema(many=True))
    def get(self) -> list[dict]:
        """List hosts with last-seen status and whether their lanes have live workers."""
        statuses = runtime().hosts.statuses()
        caller = principal()
        return [_with_lanes(r, statuses.get(r["name"])) for r in runtime().hosts.list()
                if caller.may_see_host(r["name"])]

    @requires("admin")
    @blp.arguments(HostCreateSchema)
    @blp.response(201, HostSchema)
    def post(self, body: dict) -> dict:
        """Register a host (unix:// or tcp:// with mutual TLS)."""
        record = runtime().hosts.create(body["name"], body["url"], body["tls"], body["route"],
                                        body["labels"])
        return _with_lanes(record, None)


@blp.route("/hosts/<string:host>")
class Host(MethodView):
    @requires("viewer")
    @blp.response(200, HostDetailSchema)
    def get(self, host: str) -> dict:
        """One host with a live ping: engine version and container counts."""
        record = host_record(host)
        try:
            live = run_query("hosts.summary", record, [])
        except DockyardError as exc:
            live = {"reachable": False, "error": exc.to_problem()}
        view = _with_lanes(record, runtime().hosts.statuses().get(host))
        view["live"] = live
        return view

    @requires("admin")
    @blp.arguments(HostUpdateSchema)
    @blp.response(200, HostSchema)
    def patch(self, body: dict, host: str) -> dict:
        """Change a host's URL, TLS material, route or labels."""
        return _with_lanes(runtime().hosts.update(host, body), None)

    @requires("admin")
    @blp.response(204)
    def delete(self, host: str) -> None:
        """Forget a host (its containers are left alone)."""
        runtime().hosts.delete(host)


@blp.route("/hosts/<string:host>/info")
class HostInfo(MethodView):
    @requires("viewer")
    @blp.response(200, description="the engine's `docker info` document")
    def get(self, host: str) -> dict:
        """`docker info`."""
        return run_query("hosts.info", host_record(host), [])


@blp.route("/hosts/<string:host>/version")
class HostVersion(MethodView):
    @requires("viewer")
    @blp.response(200, description="the engine's `docker version` document")
    def get(self, host: str) -> dict:
        """`docker version`."""
        return run_query("hosts.version", host_record(host), [])


@blp.route("/hosts/<string:host>/df")
class HostDiskUsage(MethodView):
    @requires("viewer")
    @blp.response(200, DiskUsageSchema)
    def get(self, host: str) -> dict:
        """`docker system df`."""
        return run_query("hosts.df", host_record(host), [])
