"""/events: every watched host's engine events as one Server-Sent-Events stream."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from flask import Response, request, stream_with_context
from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import principal, requires
from app.core.errors import InvalidInputError
from app.core.store import get_redis
from app.integrations.webhooks import EVENTS_STREAM
from app.runtime import runtime
from app.security.auth import Principal
from app.security.redaction import redact_for
from schemas.webhooks import EVENT_ID, EventStreamArgsSchema

blp = Blueprint("events", __name__, description="Live engine events of every host")

_KEEPALIVE_SECONDS = 10


@blp.route("/events")
class Events(MethodView):
    @requires("viewer")
    @blp.arguments(EventStreamArgsSchema, location="query")
    @blp.response(200, description="text/event-stream: one event per engine event; the SSE "
                                   "`event` is `engine.<type>.<action>`, `data` the event "
                                   "with its `host`, `id` its position for Last-Event-ID")
    def get(self, args: dict) -> Response:
        """Engine events (start, die, oom, health_status, …) of the hosts the token sees (SSE).

        Resumes after `Last-Event-ID` (or `?after=`) without a gap while the event is still
        in the capped stream; without either it starts with the next event. Like `docker
        events` the stream stays open; a keep-alive comment is sent every 10 s. Unknown hosts
        are 404, hosts outside the token's scope 403.
        """
        for host in args["host"]:
            principal().require_host(host)
            runtime().hosts.get(host)
        after = request.headers.get("Last-Event-ID") or args["after"] or _newest_id()
        if not re.fullmatch(EVENT_ID, after):
            raise InvalidInputError("Last-Event-ID must be an event id such as 1700000000000-0",
                                    errors={"Last-Event-ID": ["not an event id"]})
        return Response(stream_with_context(_stream(after, args, principal())),
                        mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _newest_id() -> str:
    newest = get_redis().xrevrange(EVENTS_STREAM, count=1)
    return newest[0][0] if newest else "0-0"


def _wanted(fields: dict[str, str], args: dict, caller: Principal) -> bool:
    host = fields.get("host", "")
    if not caller.may_see_host(host) or host not in args["host"]:
        return False
    if args["type"] and fields.get("type") not in args["type"]:
        return False
    if args["action"]:
        action = json.loads(fields.get("data", "{}")).get("action") or ""
        return action.split(":", 1)[0] in args["action"]
    return True


def _stream(after: str, args: dict, caller: Principal) -> Iterator[str]:
    redis = get_redis()
    yield "retry: 2000\n\n"
    while True:
        reply = redis.xread({EVENTS_STREAM: after}, count=200, block=_KEEPALIVE_SECONDS * 1000)
        if not reply:
            yield ": keep-alive\n\n"
            continue
        for event_id, fields in reply[0][1]:
            after = event_id
            if _wanted(fields, args, caller):
                data = fields["data"]
                if caller.role == "viewer":
                    data = json.dumps(redact_for(caller.role, "event", json.loads(data)))
                yield f"id: {event_id}\nevent: {fields['event']}\ndata: {data}\n\n"
