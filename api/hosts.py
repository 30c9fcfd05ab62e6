"""/hosts: the engine inventory and engine-wide reads (info, version, df, events)."""

from __future__ import annotations

import time
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import principal, redacted, requires
from app.core.errors import ConflictError, DockyardError, InvalidInputError
from app.core.task_names import HOSTS_DF, HOSTS_EVENTS, HOSTS_INFO, HOSTS_SUMMARY, HOSTS_VERSION
from app.engine.event_times import DEFAULT_WINDOW_SECONDS, MAX_WINDOW_SECONDS, parse_event_time
from app.fleet import hosts as hostviews
from app.fleet.hosts import queues_for
from app.jobs.dispatch import lane_alive, run_query
from app.runtime import runtime
from schemas.hosts import (
    AgentCredentialsSchema,
    DiskUsageSchema,
    EventsArgsSchema,
    EventSchema,
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
        """Register a host (unix://, tcp:// with mutual TLS, or ssh:// with a stored key)."""
        record = runtime().hosts.create(body["name"], body["url"], body["tls"], body["route"],
                                        body["labels"], ssh=body["ssh"])
        view = _with_lanes(record, None)
        if record["route"] == "agent":
            # Shown once, like a token: only the password's hash stays in the record.
            view["agent_credentials"] = runtime().hosts.issue_agent_access(record["name"])
        return view


@blp.route("/hosts/<string:host>")
class Host(MethodView):
    @requires("viewer")
    @blp.response(200, HostDetailSchema)
    def get(self, host: str) -> dict:
        """One host with a live ping: engine version and container counts."""
        record = host_record(host)
        try:
            live = run_query(HOSTS_SUMMARY, record, [])
        except DockyardError as exc:
            live = {"reachable": False, "error": exc.to_problem()}
        view = _with_lanes(record, runtime().hosts.statuses().get(host))
        view["live"] = live
        return view

    @requires("admin")
    @blp.arguments(HostUpdateSchema)
    @blp.response(200, HostSchema)
    def patch(self, body: dict, host: str) -> dict:
        """Change a host's URL, TLS or SSH material, route or labels.

        Moving a host to `route: agent` answers its agent's credentials (once); moving it
        to `central` deletes its agent's Redis user.
        """
        record = runtime().hosts.update(host, body)
        view = _with_lanes(record, None)
        if record.get("route") == "agent" and not record.get("agent"):
            view["agent_credentials"] = runtime().hosts.issue_agent_access(host)
        return view

    @requires("admin")
    @blp.response(204)
    def delete(self, host: str) -> None:
        """Forget a host (its containers are left alone)."""
        runtime().hosts.delete(host)


@blp.route("/hosts/<string:host>/agent-credentials")
class HostAgentCredentials(MethodView):
    @requires("admin")
    @blp.response(201, AgentCredentialsSchema)
    def post(self, host: str) -> dict:
        """Re-key an agent host: new credentials, shown once; the old password is refused
        and the connections logged in with it are closed."""
        record = host_record(host)
        if record.get("route") != "agent":
            raise ConflictError(f"host '{host}' is not served by an agent (route: central)")
        return runtime().hosts.issue_agent_access(host)


@blp.route("/hosts/<string:host>/info")
class HostInfo(MethodView):
    @requires("viewer")
    @blp.response(200, description="the engine's `docker info` document")
    def get(self, host: str) -> dict:
        """`docker info`."""
        return run_query(HOSTS_INFO, host_record(host), [])


@blp.route("/hosts/<string:host>/version")
class HostVersion(MethodView):
    @requires("viewer")
    @blp.response(200, description="the engine's `docker version` document")
    def get(self, host: str) -> dict:
        """`docker version`."""
        return run_query(HOSTS_VERSION, host_record(host), [])


@blp.route("/hosts/<string:host>/df")
class HostDiskUsage(MethodView):
    @requires("viewer")
    @blp.response(200, DiskUsageSchema)
    def get(self, host: str) -> dict:
        """`docker system df`."""
        return run_query(HOSTS_DF, host_record(host), [])


@blp.route("/hosts/<string:host>/events")
class HostEvents(MethodView):
    @requires("viewer")
    @blp.arguments(EventsArgsSchema, location="query")
    @blp.response(200, EventSchema(many=True))
    def get(self, args: dict, host: str) -> Any:
        """`docker events --since --until --filter …` over a bounded window (at most 24 h).

        `until` defaults to now (and is never later), `since` to an hour before it; at most
        `limit` events (≤ 10,000) are answered, and `X-Dockyard-Truncated: true` says more
        were left out.
        """
        since, until = _event_window(args.get("since"), args.get("until"))
        filters = {key: args[key] for key in ("type", "container", "image", "event", "label")
                   if args[key]}
        answer = run_query(HOSTS_EVENTS, host_record(host),
                           [since, until, filters, args["limit"]])
        headers = {"X-Dockyard-Truncated": "true"} if answer["truncated"] else {}
        return redacted("event", answer["events"]), headers


def _event_window(since_arg: str | None, until_arg: str | None) -> tuple[float, float]:
    now = time.time()
    errors: dict[str, list[str]] = {}
    times: dict[str, float] = {}
    for name, raw in (("since", since_arg), ("until", until_arg)):
        if raw in (None, ""):
            continue
        try:
            times[name] = parse_event_time(raw, now)
        except ValueError:
            errors[name] = ["a unix timestamp, an RFC 3339 time with zone, or a duration "
                            "such as 10m"]
    if errors:
        raise InvalidInputError("the request has invalid fields: " + ", ".join(errors),
                                errors=errors)
    until = min(times.get("until", now), now)
    since = times.get("since", until - DEFAULT_WINDOW_SECONDS)
    if since > until:
        raise InvalidInputError("since is after until", errors={"since": ["after until"]})
    if until - since > MAX_WINDOW_SECONDS:
        raise InvalidInputError(f"the window is longer than {MAX_WINDOW_SECONDS // 3600} h",
                                errors={"since": ["window too long"]})
    return since, until
