"""Interactive sessions: POST …/sessions (exec -it, attach), their WebSocket, the browser console."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint as FlaskBlueprint
from flask import Response, request, send_from_directory
from flask.views import MethodView
from flask_smorest import Blueprint
from simple_websocket import Server

import app
from api.common import caller_context, host_record, principal, requires
from app.core.errors import NotFoundError
from app.core.store import get_redis
from app.core.task_names import SESSIONS_CHECK, SESSIONS_REAP, SESSIONS_RUN
from app.fleet.hosts import queues_for
from app.jobs.dispatch import require_lane, run_query
from app.runtime import runtime
from app.security.policy import policy_from_settings
from app.sessions.relay import Relay, SessionStore, audit_entry
from schemas.sessions import SessionSchema, SessionSpecSchema

logger = logging.getLogger(__name__)

PROTOCOL = """
Connect to `url` (a path on this API; `ws://` or `wss://`) within the ticket's lifetime; the
ticket works once. **Binary frames** carry raw terminal bytes both ways. **Text frames** are
JSON control messages: `{"resize": [cols, rows]}` from the client; `{"exit": code}` from the
server, which then closes with 1000. Other endings close with a code and a reason:
4403/4404/4409 (refused, gone, container not running or stopped, found on the worker),
4401 the token that created the session was revoked or expired, 4408 idle timeout
(`DOCKYARD_SESSION_IDLE_SECONDS`), 4410 maximum duration (`DOCKYARD_SESSION_MAX_SECONDS`),
1007 a text frame that is not a control message, 1011 the worker holding the session was
lost, 1012 that worker is restarting, 1013 no worker serves the host, 4502/4503/4504 the
engine failed, was unreachable or did not answer. A reused or expired ticket is refused
before the upgrade (401). When the client disconnects, the session's process is killed (an
attach only detaches).
"""

blp = Blueprint("sessions", __name__, description="Interactive sessions (exec -it, attach)")
# The WebSocket and the console page authenticate themselves (a ticket; a token typed into
# the page), so they live outside the OpenAPI blueprint and its bearer-token hooks.
pages = FlaskBlueprint("console", __name__)
STATIC_DIR = Path(app.__file__).resolve().parent / "static" / "console"
_MAX_MESSAGE_BYTES = 1 << 20
# Bytes of whole messages the API holds for the worker before it stops reading the client's
# socket (plus at most one partial message of _MAX_MESSAGE_BYTES inside wsproto).
_MAX_PENDING_BYTES = 1 << 20
# How long a lost session's process may wait for a worker of its host to kill it.
_REAP_WITHIN_SECONDS = 600


def sessions() -> SessionStore:
    return SessionStore(get_redis())


@blp.route("/hosts/<string:host>/containers/<string:ref>/sessions")
class ContainerSessions(MethodView):
    @requires("operator")
    @blp.arguments(SessionSpecSchema)
    @blp.response(201, SessionSchema)
    def post(self, spec: dict, host: str, ref: str) -> Any:
        """`docker exec -it` / `docker attach`: a session to open over a WebSocket.

        Checked like `exec` before anything runs: the operator role, the host in the
        token's scope, a managed container in the caller's scope that passes the policy,
        no privileged exec (403 naming the rule), a running container (409).
        """
        settings = runtime().settings
        policy_from_settings(settings).enforce_exec(spec, principal().role == "admin")
        record = host_record(host)
        container_id = run_query(SESSIONS_CHECK, record, [caller_context(), ref])
        session, ticket = sessions().create(
            host=host, container_id=container_id, ref=ref, spec=spec, caller=caller_context(),
            ticket_seconds=settings.session_ticket_seconds,
            max_seconds=settings.session_max_seconds)
        return {"id": session["id"], "expires_at": session["expires_at"],
                "url": f"/api/v1/sessions/{session['id']}/socket?ticket={ticket}"}, 201


ContainerSessions.post.__doc__ += PROTOCOL


def _public(view: Any) -> Any:
    view.authenticates_itself = True
    return view


class _PacedSocket:
    """The client's socket, read only while the relay keeps up (backpressure on input)."""

    def __init__(self, sock: Any, server: Server) -> None:
        self._sock = sock
        self._server = server

    def recv(self, size: int) -> bytes:
        while self._server.connected and \
                sum(len(message) for message in self._server.input_buffer) >= _MAX_PENDING_BYTES:
            time.sleep(0.005)
        return self._sock.recv(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class SessionSocket(Server):
    """simple-websocket's server, with bounded input and no per-message compression
    (terminal bytes are small; the 64 MiB cat is not worth the CPU)."""

    def handshake(self) -> None:
        self.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        self.sock = _PacedSocket(self.sock, self)
        super().handshake()


class _AfterWebSocket(Response):
    """What the view returns once the socket is closed: nothing more may be written to it."""

    def __init__(self, ws: Server) -> None:
        super().__init__()
        self.ws = ws

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if self.ws.mode == "gunicorn":
            raise StopIteration()  # gunicorn then drops the connection (as flask-sock does)
        if self.ws.mode == "werkzeug":
            return super().__call__(environ, start_response)
        return []


@pages.route("/api/v1/sessions/<string:session_id>/socket", websocket=True)
@_public
def session_socket(session_id: str) -> Response:
    """The session's WebSocket; the ticket in the query is checked (and spent) before the upgrade."""
    record = sessions().claim(session_id, request.args.get("ticket"))
    settings = runtime().settings
    ws = SessionSocket(request.environ, max_message_size=_MAX_MESSAGE_BYTES)
    relay = Relay(ws, record, get_redis(), start_timeout=settings.query_timeout_seconds,
                  idle_seconds=settings.session_idle_seconds,
                  reap=lambda: _reap_on_worker(record),
                  authorized=lambda: _token_valid(record["caller"]["id"]))
    outcome = relay.run(lambda: _start_on_worker(record))
    try:
        runtime().audit.record(audit_entry(record, outcome))
    except Exception:  # the audit store being down must not break the close
        logger.warning("audit record of session %s failed", session_id, exc_info=True)
    logger.info("session %s closed code=%s exit=%s in=%s out=%s", session_id,
                outcome.close_code, outcome.exit_code, outcome.bytes_in, outcome.bytes_out)
    try:
        ws.close()
    except Exception:  # already closed, which is the usual case
        logger.debug("session %s: socket already closed", session_id)
    return _AfterWebSocket(ws)


def _start_on_worker(record: dict[str, Any]) -> None:
    """Send ``sessions.run`` to the query lane of the container's host (signed)."""
    settings = runtime().settings
    host = runtime().hosts.get(record["host"])
    queue = queues_for(host)[1]
    require_lane(queue, host["name"])
    runtime().celery.send_task(
        SESSIONS_RUN, queue=queue, expires=settings.query_timeout_seconds,
        args=[record["id"], host["name"], host.get("revision", 1), record["caller"],
              record["container"], record["spec"],
              {"idle_seconds": settings.session_idle_seconds,
               "max_seconds": settings.session_max_seconds}])


def _token_valid(token_id: str) -> bool:
    """Whether the token that created a session still exists and has not expired."""
    try:
        token = runtime().tokens.get(token_id)
    except NotFoundError:
        return False
    expires_at = token.get("expires_at")
    return not expires_at or datetime.fromisoformat(expires_at.replace("Z", "+00:00")) \
        > datetime.now(UTC)


def _reap_on_worker(record: dict[str, Any]) -> None:
    """The worker holding the session died: have the host's next worker kill its process."""
    if record["spec"].get("attach"):
        return  # an attach runs nothing of its own
    host = runtime().hosts.get(record["host"])
    runtime().celery.send_task(
        SESSIONS_REAP, queue=queues_for(host)[1], expires=_REAP_WITHIN_SECONDS,
        args=[record["id"], host["name"], host.get("revision", 1), record["container"]])


@pages.get("/console/<string:host>/<string:container>")
@_public
def console_page(host: str, container: str) -> Response:
    """The browser terminal; it asks for a token, then creates and opens a session."""
    response = send_from_directory(STATIC_DIR, "console.html", mimetype="text/html")
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'")
    return response


@pages.get("/console/static/<path:filename>")
@_public
def console_static(filename: str) -> Response:
    """xterm.js and its fit addon, vendored (no other origin is ever contacted)."""
    return send_from_directory(STATIC_DIR, filename)
