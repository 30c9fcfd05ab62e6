"""Sessions without a stack: the control protocol, close reasons, the spec, the CLI's parsing."""

from __future__ import annotations

import json

import pytest
from marshmallow import ValidationError

from app.cli.terminal import session_body, websocket_url
from app.engine.sessions import Demultiplexer
from app.sessions.relay import (
    CLOSE_NO_WORKER,
    InvalidControlError,
    SessionOutcome,
    audit_entry,
    close_code_for,
    close_reason,
    parse_control,
)
from schemas.sessions import SessionSpecSchema


def test_the_only_client_control_message_is_resize_with_two_positive_ints():
    assert parse_control('{"resize": [80, 24]}') == {"resize": [80, 24]}
    for bad in ("not json", "[]", '{"resize": [80]}', '{"resize": [0, 24]}',
                '{"resize": [80, true]}', '{"resize": ["80", 24]}', '{"resize": [80, 99999]}',
                '{"resize": [80, 24], "exit": 0}', '{"exit": 0}'):
        with pytest.raises(InvalidControlError):
            parse_control(bad)


def test_close_reasons_fit_a_close_frame_on_whole_characters():
    assert close_reason("idle for 3s") == "idle for 3s"
    long = "é" * 100
    cut = close_reason(long)
    assert len(cut.encode()) <= 123 and cut.endswith("...")


def test_worker_problems_become_4000_plus_status_and_no_worker_is_1013():
    assert close_code_for({"status": 403}) == 4403
    assert close_code_for({"status": 409}) == 4409
    assert close_code_for({"status": 503, "type": "https://dockyard.dev/problems/no-worker"}) \
        == CLOSE_NO_WORKER


def test_demultiplexer_joins_frames_split_anywhere():
    frames = b"\x01\x00\x00\x00\x00\x00\x00\x03out" + b"\x02\x00\x00\x00\x00\x00\x00\x03err"
    demux = Demultiplexer()
    shown = b"".join(demux.feed(frames[i:i + 5]) for i in range(0, len(frames), 5))
    assert shown == b"outerr"


def test_spec_is_exec_or_attach_never_both():
    schema = SessionSpecSchema()
    assert schema.load({"cmd": "sh -l"})["cmd"] == ["sh", "-l"]
    assert schema.load({"attach": True, "size": [80, 24]})["size"] == [80, 24]
    for bad in ({}, {"attach": True, "cmd": ["sh"]}, {"attach": True, "env": {"A": "1"}},
                {"cmd": ["sh"], "size": [80]}, {"cmd": ["sh"], "detach": True}):
        with pytest.raises(ValidationError):
            schema.load(bad)


def test_audit_entry_keeps_counts_and_env_names_never_env_values():
    record = {"id": "s1", "host": "local", "ref": "web", "container": "c" * 64,
              "caller": {"id": "t1", "name": "ops", "role": "operator", "hosts": None},
              "spec": {"cmd": ["sh"], "tty": True, "env": {"API_KEY": "hunter2"}}}
    outcome = SessionOutcome(ended_at="later", exit_code=0, close_code=1000, bytes_in=3,
                             bytes_out=5)
    entry = audit_entry(record, outcome)
    assert entry["session"]["bytes_in"] == 3 and entry["outcome"] == "ok"
    assert entry["request"]["body"]["env"] == ["API_KEY"]
    assert "hunter2" not in json.dumps(entry)


def test_cli_reads_docker_exec_and_attach_flags():
    host, container, body = session_body(["exec", "-it", "-u", "1000", "-e", "A=1", "local",
                                          "web", "sh", "-c", "echo hi"])
    assert (host, container) == ("local", "web")
    assert body["cmd"] == ["sh", "-c", "echo hi"] and body["tty"] and body["interactive"]
    assert body["user"] == "1000" and body["env"] == ["A=1"]
    assert session_body(["attach", "local", "web"]) == ("local", "web", {"attach": True})
    with pytest.raises(ValueError):
        session_body(["exec", "-it", "local", "web"])
    with pytest.raises(ValueError):
        session_body(["attach", "local"])


def test_websocket_url_follows_the_api_scheme():
    assert websocket_url("https://dy.example/api/v1", "/api/v1/sessions/x/socket?ticket=t") \
        == "wss://dy.example/api/v1/sessions/x/socket?ticket=t"
    assert websocket_url("http://127.0.0.1:8000/api/v1", "/p") == "ws://127.0.0.1:8000/p"
