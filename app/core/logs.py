"""Log records as JSON lines (or text), with request/job context and secrets redacted."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.core.store import get_settings

REQUEST_ID_HEADER = "dockyard_request_id"

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
_host: contextvars.ContextVar[str | None] = contextvars.ContextVar("host", default=None)

_MASK = "***"
# Order matters: a PEM block may contain text the later patterns would half-match.
_SECRETS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?(?:-----END \1-----|\Z)", re.DOTALL),
     r"-----BEGIN \1----- " + _MASK + r" -----END \1-----"),
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), r"\1 " + _MASK),
    (re.compile(r"\bdy_[A-Za-z0-9_-]+"), "dy_" + _MASK),
    # password=…, "client_key": "…", token: … — the value up to a separator or quote.
    (re.compile(r"""(?ix)
        (["']?[\w.-]*(?:password|passwd|secret|token|private_key|client_key)[\w.-]*["']?)
        (\s*[=:]\s*)
        (["']?)[^\s"'&,;}]+"""), r"\1\2\3" + _MASK),
)

_SECRET_KEY = re.compile(r"password|passwd|secret|token|private_key|client_key|authorization",
                         re.IGNORECASE)
# Celery puts a task's arguments and return value on its log records (``extra={"data":…}``):
# job specs may carry environment values, so they never reach a log line.
_TASK_PAYLOAD = frozenset({"args", "kwargs", "return_value"})

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id", "job_id", "host", "context"}


def redact(text: str) -> str:
    """``text`` with bearer tokens, ``dy_`` tokens, PEM blocks and password values masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def current_request_id() -> str | None:
    """The id of the HTTP request (or of the request that queued the running job)."""
    # Without Flask loaded (workers, beat, agents) there is no request context to look in;
    # importing it here would load Flask into every worker on its first log line.
    flask = sys.modules.get("flask")
    if flask is not None and flask.has_request_context():
        return flask.g.get("request_id")
    return _request_id.get()


@contextmanager
def job_context(job_id: str | None = None, host: str | None = None,
                request_id: str | None = None) -> Iterator[None]:
    """Tag every log record made inside the block with the job, host and request ids."""
    tokens = []
    for var, value in ((_job_id, job_id), (_host, host), (_request_id, request_id)):
        if value is not None:
            tokens.append((var, var.set(value)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``job_id`` and ``host`` to each record (None when unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id()
        if getattr(record, "job_id", None) is None:
            record.job_id = _job_id.get()
        if getattr(record, "host", None) is None:
            record.host = _host.get()
        parts = [f"{name}={value}" for name in ("request_id", "job_id", "host")
                 if (value := getattr(record, name, None))]
        record.context = (" [" + " ".join(parts) + "]") if parts else ""
        return True


class RedactingFilter(logging.Filter):
    """Masks secrets in the rendered message and traceback before any formatter sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            record.http = _access_fields(record.args)
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format must not lose the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def _access_fields(atoms: dict[str, Any]) -> dict[str, Any]:
    """gunicorn's access-log atoms as named fields (``request_id`` from the response header)."""
    fields = {"method": atoms.get("m"), "path": atoms.get("U"), "query": atoms.get("q") or None,
              "status": _int(atoms.get("s")), "bytes": _int(atoms.get("B")),
              "duration_ms": round(_int(atoms.get("D")) / 1000, 3) if atoms.get("D") else None,
              "remote": atoms.get("h"), "user_agent": atoms.get("a"),
              "request_id": atoms.get("{x-request-id}o")}
    return {name: redact(value) if isinstance(value, str) else value
            for name, value in fields.items() if value not in (None, "-")}


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, job_id, host, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
            "request_id": getattr(record, "request_id", None),
            "job_id": getattr(record, "job_id", None),
            "host": getattr(record, "host", None),
            "pid": record.process,
        }
        http = getattr(record, "http", None)
        if http:
            if entry["request_id"] is None:
                entry["request_id"] = http.pop("request_id", None)
            entry.update(http)
        for name, value in vars(record).items():
            if name not in _STANDARD and name != "http" and name not in entry:
                if name == "data" and isinstance(value, dict):
                    value = {k: v for k, v in value.items() if k not in _TASK_PAYLOAD}
                entry[name] = scrub(value, name)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = redact(record.exc_text)
        return json.dumps(entry, default=_jsonable, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal; the same context, the same redaction."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context"):
            ContextFilter().filter(record)
        return redact(super().format(record))


def scrub(value: Any, key: str = "") -> Any:
    """``value`` with secret-named fields masked and every string redacted, at any depth."""
    if key and _SECRET_KEY.search(key) and value not in (None, ""):
        return _MASK
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def _iso_utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def _jsonable(value: Any) -> str:
    return redact(str(value))


def log_format() -> str:
    """``json`` or ``text`` from DOCKYARD_LOG_FORMAT: text on a terminal by default, json in the image."""
    return get_settings().log_format


def make_handler(stream: Any = None) -> logging.Handler:
    """A stream handler with the chosen formatter, the context and the redaction filters."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format() == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    return handler


def configure(level: str | int | None = None) -> None:
    """Send every logger's records through one handler on the root logger (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_dockyard", False):
            root.removeHandler(handler)
    handler = make_handler()
    handler._dockyard = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level or get_settings().log_level)


def gunicorn_logconfig() -> dict[str, Any]:
    """A ``logconfig_dict`` for gunicorn: its error and access logs and the app's through one handler."""
    level = get_settings().log_level
    formatter = {"()": "app.core.logs.JsonFormatter"} if log_format() == "json" else \
        {"()": "app.core.logs.TextFormatter"}
    handler = {"class": "logging.StreamHandler", "formatter": "dockyard",
               "filters": ["context", "redact"], "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "app.core.logs.ContextFilter"},
                    "redact": {"()": "app.core.logs.RedactingFilter"}},
        "formatters": {"dockyard": formatter},
        "handlers": {"console": handler},
        "root": {"level": level, "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }


# -- Celery wiring: connected by app.jobs.celery.make_celery ------------------------------------

def celery_setup_logging(loglevel: str | int | None = None, **_: Any) -> None:
    """Celery's ``setup_logging`` signal: our handler instead of Celery's own."""
    configure(loglevel or None)


def add_request_id_header(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish``: carry the current request id in the task message."""
    request_id = current_request_id()
    if headers is not None and request_id:
        headers[REQUEST_ID_HEADER] = request_id


def bind_task_request_id(task: Any = None, **_: Any) -> None:
    """``task_prerun``: the request id the task was published with tags its log records."""
    request = getattr(task, "request", None)
    request_id = getattr(request, REQUEST_ID_HEADER, None) or \
        (getattr(request, "headers", None) or {}).get(REQUEST_ID_HEADER)
    _request_id.set(request_id)
    _job_id.set(None)
    _host.set(None)


def unbind_task_request_id(**_: Any) -> None:
    """``task_postrun``: nothing of this task leaks into the next one's records."""
    _request_id.set(None)
    _job_id.set(None)
    _host.set(None)
