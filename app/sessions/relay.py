"""Interactive sessions: records, single-use tickets, and the API's end of the relay.

A session is created by ``POST …/sessions`` (checked like ``exec``) and opened by a
WebSocket carrying its ticket. The API never touches the engine: it relays WebSocket frames
through two Redis pipes (``app.jobs.pipes``, one per direction) to the worker of the host's query
lane, which holds the hijacked engine socket (``tasks.sessions``). Text frames are JSON
control messages: ``{"resize": [cols, rows]}`` in, ``{"exit": code}`` out before a 1000
close; any other ending is a close code below with a reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import redis

from app.core.errors import DockyardError, UnauthorizedError
from app.core.store import PREFIX, utcnow
from app.jobs.pipes import CONTROL, DATA, END, ERROR, PipeClosedError, PipeReader, PipeWriter
from app.security.audit import redact

logger = logging.getLogger(__name__)

# Close codes: 1000 after {"exit": code}; 4000 + an HTTP status for a refusal found on the
# worker (4403, 4404, 4409) or an engine failure (4502, 4503, 4504); the rest below.
CLOSE_NORMAL = 1000
CLOSE_BAD_MESSAGE = 1007
CLOSE_WORKER_LOST = 1011
CLOSE_WORKER_RESTART = 1012
CLOSE_NO_WORKER = 1013
CLOSE_TOKEN_REVOKED = 4401
CLOSE_IDLE = 4408
CLOSE_MAX_DURATION = 4410
CLOSE_CONTAINER_STOPPED = 4409
# A WebSocket close reason is at most 123 bytes of UTF-8.
_REASON_BYTES = 123
HEARTBEAT_SECONDS = 1.0
# A heartbeat older than this means the other end (worker or API) is gone.
HEARTBEAT_TTL_SECONDS = 5
_MAX_RESIZE = 10_000
# How often an open session checks that its creator's token still exists and is unexpired.
TOKEN_CHECK_SECONDS = 5.0


def close_code_for(problem: dict[str, Any]) -> int:
    """The close code for a problem the worker reported instead of starting the session."""
    status = int(problem.get("status") or 500)
    if status == 503 and problem.get("type", "").endswith("/no-worker"):
        return CLOSE_NO_WORKER
    return 4000 + status if 400 <= status < 600 else CLOSE_WORKER_LOST


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame may carry (whole UTF-8 characters)."""
    data = text.encode()
    if len(data) <= _REASON_BYTES:
        return text
    return data[:_REASON_BYTES - 3].decode(errors="ignore") + "..."


def output_pipe(session_id: str, host: str) -> str:
    """The pipe of a session's output, under its host's prefix (where the agent may write)."""
    return f"{host}/session-{session_id}-out"


def input_pipe(session_id: str, host: str) -> str:
    return f"{host}/session-{session_id}-in"


def worker_beat_key(session_id: str, host: str) -> str:
    return f"{PREFIX}h:{host}:session:{session_id}:worker"


def client_beat_key(session_id: str, host: str) -> str:
    return f"{PREFIX}h:{host}:session:{session_id}:client"


def _record_key(session_id: str) -> str:
    return f"{PREFIX}session:{session_id}"


def _ticket_key(ticket: str) -> str:
    return f"{PREFIX}session-ticket:{hashlib.sha256(ticket.encode()).hexdigest()}"


class SessionStore:
    """Session records and their tickets (only a ticket's hash is stored)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def create(self, *, host: str, container_id: str, ref: str, spec: dict[str, Any],
               caller: dict[str, Any], ticket_seconds: float,
               max_seconds: float) -> tuple[dict[str, Any], str]:
        """A new session and its ticket (returned once, never stored in clear)."""
        session_id = uuid.uuid4().hex
        ticket = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(seconds=ticket_seconds)
        record = {"id": session_id, "host": host, "container": container_id, "ref": ref,
                  "spec": spec, "caller": caller, "created_at": utcnow(),
                  "expires_at": expires.isoformat(timespec="seconds").replace("+00:00", "Z")}
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(_record_key(session_id), json.dumps(record),
                 ex=int(ticket_seconds + max_seconds + 60))
        pipe.set(_ticket_key(ticket), session_id, px=int(ticket_seconds * 1000))
        pipe.execute()
        return record, ticket

    def claim(self, session_id: str, ticket: str | None) -> dict[str, Any]:
        """The session the ticket opens; the ticket is spent by this call.

        Raises:
            UnauthorizedError: no ticket, an unknown, expired or spent one, or one for
                another session.
        """
        if not ticket:
            raise UnauthorizedError("a session WebSocket needs the ticket from its url")
        owner = self.redis.getdel(_ticket_key(ticket))
        if owner != session_id:
            raise UnauthorizedError("the session ticket is unknown, expired or already used; "
                                    "create a new session")
        raw = self.redis.get(_record_key(session_id))
        if raw is None:
            raise UnauthorizedError("the session no longer exists; create a new one")
        return json.loads(raw)


class WebSocket(Protocol):
    """What the relay needs of a server WebSocket (simple_websocket.Server)."""

    connected: bool

    def send(self, data: bytes | str) -> None: ...

    def receive(self, timeout: float | None = None) -> bytes | str | None: ...

    def close(self, reason: int | None = None, message: str | None = None) -> None: ...


@dataclass
class SessionOutcome:
    """How a session ended, for its audit record (never its content)."""

    started_at: str = field(default_factory=utcnow)
    ended_at: str | None = None
    exit_code: int | None = None
    close_code: int | None = None
    close_reason: str = ""
    bytes_in: int = 0
    bytes_out: int = 0


class Relay:
    """The API's end of one session: WebSocket frames to and from the worker's pipes.

    The request thread reads the client (its messages go into the input pipe, with
    backpressure from the pipe's credits); a second thread forwards the output pipe to the
    client (a client that stops reading blocks it, and so the worker, through credits).
    """

    def __init__(self, ws: WebSocket, record: dict[str, Any], redis_client: redis.Redis,
                 start_timeout: float, idle_seconds: float,
                 reap: Callable[[], None] = lambda: None,
                 authorized: Callable[[], bool] = lambda: True) -> None:
        self.ws = ws
        self.reap = reap
        self.authorized = authorized
        self.record = record
        self.redis = redis_client
        self.start_timeout = start_timeout
        self.output = PipeReader(output_pipe(record["id"], record["host"]))
        self.input = PipeWriter(input_pipe(record["id"], record["host"]),
                                stall_seconds=idle_seconds)
        self.outcome = SessionOutcome()
        self.finished = threading.Event()
        self._send_lock = threading.Lock()

    def run(self, start: Any) -> SessionOutcome:
        """Start the worker's side (``start()`` sends its task) and relay until the end."""
        session_id = self.record["id"]
        self._beat()
        try:
            start()
            self.output.open(self.start_timeout)
        except DockyardError as exc:
            problem = exc.to_problem()
            self._close(close_code_for(problem), problem.get("detail") or problem["title"])
            self._end()
            return self.outcome
        logger.info("session %s open host=%s container=%s", session_id, self.record["host"],
                    self.record["container"][:12])
        forward = threading.Thread(target=self._forward_output, daemon=True,
                                   name=f"session-{session_id[:8]}-out")
        forward.start()
        try:
            self._forward_input()
        finally:
            self.finished.set()
            forward.join(timeout=10)
            self._end()
        return self.outcome

    # -- client → worker --------------------------------------------------------------

    def _forward_input(self) -> None:
        next_beat = 0.0
        next_token_check = time.monotonic() + TOKEN_CHECK_SECONDS
        while not self.finished.is_set():
            try:
                message = self.ws.receive(timeout=HEARTBEAT_SECONDS)
            except Exception:  # ConnectionClosed: the client left (or we closed)
                return
            if time.monotonic() >= next_beat:
                self._beat()
                next_beat = time.monotonic() + HEARTBEAT_SECONDS
            if time.monotonic() >= next_token_check:
                # A session outlives its request: revoking the token must still end it.
                if not self.authorized():
                    self._close(CLOSE_TOKEN_REVOKED, "the session's token was revoked or expired")
                    return
                next_token_check = time.monotonic() + TOKEN_CHECK_SECONDS
            if message is None:
                if not self.ws.connected:
                    return
                continue
            try:
                if isinstance(message, bytes):
                    self.input.write(message)
                    self.outcome.bytes_in += len(message)
                else:
                    self.input.control(parse_control(message))
            except InvalidControlError as exc:
                self._close(CLOSE_BAD_MESSAGE, str(exc))
                return
            except PipeClosedError:
                return  # the worker ended the session; the output side says why

    def _beat(self) -> None:
        self.redis.set(client_beat_key(self.record["id"], self.record["host"]), b"1",
                       ex=HEARTBEAT_TTL_SECONDS)

    # -- worker → client --------------------------------------------------------------

    def _forward_output(self) -> None:
        try:
            self._relay_output()
        except Exception:
            logger.warning("session %s: output relay failed", self.record["id"], exc_info=True)
            self._close(CLOSE_WORKER_LOST, "the session relay failed")
        finally:
            self.finished.set()
            # The input side must not wait for credits from a worker that is gone.
            self.redis.set(self.input.closed_key, b"1", ex=60)

    def _relay_output(self) -> None:
        while not self.finished.is_set():
            item = self.output.poll(HEARTBEAT_SECONDS)
            if item is None:
                if not self.redis.exists(worker_beat_key(self.record["id"], self.record["host"])):
                    self._close(CLOSE_WORKER_LOST, "the worker holding the session was lost")
                    self.reap()  # its process may still run: another worker kills it
                    return
                continue
            kind, payload = item
            if kind == DATA:
                if not self._send(payload):
                    return
                self.outcome.bytes_out += len(payload)
            elif kind == CONTROL:
                message = json.loads(payload)
                if "exit" in message:
                    self.outcome.exit_code = message["exit"]
                    self._send(json.dumps({"exit": message["exit"]}))
                    self._close(CLOSE_NORMAL, "exited")
                else:
                    self._close(int(message["close"]), message.get("reason", ""))
                return
            elif kind == ERROR:
                problem = json.loads(payload)
                self._close(close_code_for(problem), problem.get("detail") or "")
                return
            elif kind == END:
                self._close(CLOSE_NORMAL, "ended")
                return

    def _send(self, data: bytes | str) -> bool:
        try:
            with self._send_lock:
                self.ws.send(data)
        except Exception:  # the client left
            return False
        return True

    def _close(self, code: int, reason: str) -> None:
        with self._send_lock:
            if self.outcome.close_code is None:
                self.outcome.close_code = code
                self.outcome.close_reason = reason
            try:
                self.ws.close(code, close_reason(reason))
            except Exception:  # already closed by the client
                logger.debug("session %s: close after the client left", self.record["id"])

    def _end(self) -> None:
        """Tell the worker the client side is over (it kills the process if still running)."""
        if self.outcome.close_code is None:
            self.outcome.close_code = 1001
            self.outcome.close_reason = "the client left"
        self.outcome.ended_at = utcnow()
        try:
            self.input.end()
            self.output.close()
            self.redis.delete(client_beat_key(self.record["id"], self.record["host"]))
        except redis.RedisError:
            logger.warning("session %s: could not signal the end", self.record["id"])


class InvalidControlError(ValueError):
    """A text frame that is not a control message this protocol knows."""


def parse_control(text: str) -> dict[str, Any]:
    """A client's control message, checked: only ``{"resize": [cols, rows]}`` exists.

    Raises:
        InvalidControlError: anything else.
    """
    try:
        message = json.loads(text)
    except ValueError:
        raise InvalidControlError("text frames must be JSON control messages") from None
    size = message.get("resize") if isinstance(message, dict) and len(message) == 1 else None
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= _MAX_RESIZE
                    for n in size)):
        raise InvalidControlError('the only control message is {"resize": [cols, rows]}')
    return {"resize": size}


def audit_entry(record: dict[str, Any], outcome: SessionOutcome) -> dict[str, Any]:
    """The session's audit record: who, container, command, times, exit, byte counts."""
    caller = record["caller"]
    spec = record["spec"]
    normal = outcome.close_code == CLOSE_NORMAL
    return {
        "ts": utcnow(), "request_id": None, "actor": caller.get("name"),
        "token_id": caller.get("id"), "method": "SESSION",
        "route": "/api/v1/hosts/<string:host>/containers/<string:ref>/sessions",
        "path": f"/api/v1/sessions/{record['id']}", "host": record["host"],
        "target": record["ref"],
        "request": {"body": redact({"attach": spec.get("attach", False), "cmd": spec.get("cmd"),
                                    "tty": spec.get("tty"), "user": spec.get("user"),
                                    "workdir": spec.get("workdir"),
                                    "env": sorted(spec.get("env") or {})})},
        "decision": "allowed", "rule": None,
        "outcome": "ok" if normal else "error", "status": outcome.close_code, "job_id": None,
        "session": {"id": record["id"], "container": record["container"],
                    "started_at": outcome.started_at, "ended_at": outcome.ended_at,
                    "exit_code": outcome.exit_code, "close_code": outcome.close_code,
                    "close_reason": outcome.close_reason, "bytes_in": outcome.bytes_in,
                    "bytes_out": outcome.bytes_out},
    }
