"""Structured log lines: the JSON shape, the job/request context, and redaction of secrets."""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace

import pytest
from flask import Flask, g

from app.core import logs
from app.core.store import get_settings


@pytest.fixture(autouse=True)
def fresh_settings():
    """Each test reads DOCKYARD_LOG_* as it set them; none leaves its settings to the next."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()

PEM = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nqhkiG9w0BAQEFAASC==\n"
       "-----END PRIVATE KEY-----")


@pytest.fixture
def emit(monkeypatch: pytest.MonkeyPatch):
    """Log one record through Dockyard's handler and return what it wrote."""

    def emit(fmt: str, message: str, *args: object, logger: str = "app.test",
             exc: BaseException | None = None, **extra: object) -> str:
        monkeypatch.setenv("DOCKYARD_LOG_FORMAT", fmt)
        get_settings.cache_clear()  # settings are read once per process
        stream = io.StringIO()
        handler = logs.make_handler(stream)
        log = logging.getLogger(logger)
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
        log.propagate = False
        try:
            if exc is not None:
                try:
                    raise exc
                except BaseException:
                    log.exception(message, *args, extra=extra or None)
            else:
                log.info(message, *args, extra=extra or None)
        finally:
            log.removeHandler(handler)
            log.propagate = True
        return stream.getvalue()

    return emit


def test_json_line_has_the_documented_fields(emit) -> None:
    line = emit("json", "job %s queued kind=%s", "01JF", "containers.provision", queue="engine.ops")
    assert line.endswith("\n") and line.count("\n") == 1
    entry = json.loads(line)
    assert {"ts", "level", "logger", "msg", "request_id", "job_id", "host"} <= entry.keys()
    assert entry["msg"] == "job 01JF queued kind=containers.provision"
    assert entry["level"] == "info" and entry["logger"] == "app.test"
    assert entry["ts"].endswith("Z") and entry["ts"][10] == "T"
    assert entry["queue"] == "engine.ops"


def test_job_context_tags_records_and_is_undone_after_the_block(emit) -> None:
    with logs.job_context(job_id="01JOB", host="edge-1", request_id="req-7"):
        inside = json.loads(emit("json", "pulling"))
    outside = json.loads(emit("json", "idle"))
    assert (inside["job_id"], inside["host"], inside["request_id"]) == ("01JOB", "edge-1", "req-7")
    assert (outside["job_id"], outside["host"], outside["request_id"]) == (None, None, None)


def test_request_id_comes_from_the_flask_request() -> None:
    app = Flask("t")
    with app.test_request_context("/"):
        g.request_id = "from-flask"
        assert logs.current_request_id() == "from-flask"
    assert logs.current_request_id() is None


def test_text_format_shows_the_context_in_brackets(emit) -> None:
    with logs.job_context(job_id="01JOB", host="local"):
        line = emit("text", "job %s succeeded", "01JOB")
    assert "INFO app.test: job 01JOB succeeded [job_id=01JOB host=local]" in line


@pytest.mark.parametrize(("secret", "kept"), [
    ("Authorization: Bearer dy_abcDEF123-_xyz", "Authorization: Bearer ***"),
    ("token dy_s3cr3tTOKENvalue issued", "token dy_*** issued"),
    ("registry login password=hunter2 user=ci", "password=*** user=ci"),
    ('{"username": "ci", "password": "hunter2"}', '"password": "***"'),
    ("DOCKYARD_SECRET_KEY=abc123 started", "DOCKYARD_SECRET_KEY=*** started"),
    ("Basic ZG9ja3lhcmQ6cHc=", "Basic ***"),
])
def test_redact_masks_tokens_and_passwords(secret: str, kept: str) -> None:
    redacted = logs.redact(secret)
    assert kept in redacted
    for value in ("abcDEF123", "s3cr3tTOKENvalue", "hunter2", "abc123", "ZG9ja3lhcmQ6cHc"):
        assert value not in redacted


def test_redact_masks_whole_pem_blocks_even_when_cut_short() -> None:
    redacted = logs.redact(f"tls material: {PEM} done")
    assert "MIIEvQ" not in redacted and "BEGIN PRIVATE KEY" in redacted and redacted.endswith("done")
    assert "MIIEvQ" not in logs.redact(PEM[:60])


def test_no_secret_reaches_a_json_line_from_args_extras_or_tracebacks(emit) -> None:
    line = emit("json", "registering %s with %s", "edge-1", PEM, auth="Bearer dy_leak1",
                exc=ValueError("bad password=hunter2"))
    entry = json.loads(line)
    assert "MIIEvQ" not in line and "dy_leak1" not in line and "hunter2" not in line
    assert entry["auth"] == "Bearer ***"
    assert "ValueError" in entry["exc"]


def test_extras_are_scrubbed_at_any_depth_and_task_payloads_dropped(emit) -> None:
    line = emit("json", "Task %s received", "containers.provision",
                data={"id": "01J", "name": "containers.provision",
                      "args": "['01J', 'local', {'env': {'API_KEY': 'k-leak'}}]"},
                registry={"url": "http://r", "password": "hunter2", "nested": [{"token": "t-leak"}]},
                token_count=3)
    entry = json.loads(line)
    assert entry["data"] == {"id": "01J", "name": "containers.provision"}
    assert entry["registry"] == {"url": "http://r", "password": "***", "nested": [{"token": "***"}]}
    assert "k-leak" not in line and "hunter2" not in line and "t-leak" not in line
    assert entry["token_count"] == "***"


def test_no_secret_reaches_a_text_line(emit) -> None:
    line = emit("text", "header %s", "Bearer dy_leak2", exc=RuntimeError(PEM))
    assert "dy_leak2" not in line and "MIIEvQ" not in line and "RuntimeError" in line


def test_gunicorn_access_lines_become_fields_with_the_request_id(emit) -> None:
    atoms = {"m": "GET", "U": "/api/v1/jobs", "q": "token=dy_leak3", "s": "200", "B": "512",
             "D": "1500", "h": "127.0.0.1", "a": "curl/8", "{x-request-id}o": "req-42"}
    entry = json.loads(emit("json", '%(h)s "%(m)s %(U)s" %(s)s', atoms, logger="gunicorn.access"))
    assert entry["request_id"] == "req-42"
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/api/v1/jobs", 200)
    assert entry["duration_ms"] == 1.5
    assert "dy_leak3" not in json.dumps(entry)


def test_request_id_travels_in_the_task_headers_to_the_worker() -> None:
    headers: dict[str, object] = {}
    with logs.job_context(request_id="req-99"):
        logs.add_request_id_header(headers=headers)
    assert headers == {logs.REQUEST_ID_HEADER: "req-99"}
    task = SimpleNamespace(request=SimpleNamespace(**headers))
    logs.bind_task_request_id(task=task)
    try:
        assert logs.current_request_id() == "req-99"
    finally:
        logs.unbind_task_request_id()
    assert logs.current_request_id() is None


def test_format_defaults_to_text_and_json_is_chosen_by_the_variable(monkeypatch) -> None:
    monkeypatch.delenv("DOCKYARD_LOG_FORMAT", raising=False)
    get_settings.cache_clear()
    assert logs.log_format() == "text"
    monkeypatch.setenv("DOCKYARD_LOG_FORMAT", "JSON")
    get_settings.cache_clear()
    assert logs.log_format() == "json"
    config = logs.gunicorn_logconfig()
    assert config["formatters"]["dockyard"]["()"] == "app.core.logs.JsonFormatter"
    assert config["handlers"]["console"]["filters"] == ["context", "redact"]
