"""Pure parsing behind the docker-command routes: exec frames, stats figures, event times."""

from __future__ import annotations

import struct

import pytest
from marshmallow import ValidationError

from app.core.errors import PolicyViolationError
from app.engine.events import event_view, parse_event_time
from app.engine.execs import ExecOutput
from app.engine.observe import stats_figures
from app.security.policy import Policy
from schemas.containers import BulkRemoveArgsSchema, ExecSpecSchema, UpdateSpecSchema


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def test_exec_output_joins_stdout_and_stderr_frames_split_anywhere():
    data = frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"done")
    output = ExecOutput()
    for i in range(0, len(data), 3):
        output.feed(data[i:i + 3])
    assert output.text == "out\nerr\ndone"
    assert output.truncated is False


def test_exec_output_keeps_only_the_limit_and_says_truncated():
    output = ExecOutput(limit=5)
    output.feed(frame(1, b"abc") + frame(1, b"defgh") + frame(2, b"ij"))
    assert output.text == "abcde"
    assert output.truncated is True


def test_stats_figures_follow_the_docker_cli_formulas():
    raw = {
        "read": "2026-01-01T00:00:00Z",
        "cpu_stats": {"cpu_usage": {"total_usage": 300}, "system_cpu_usage": 2000, "online_cpus": 2},
        "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 1000},
        "memory_stats": {"usage": 1000, "limit": 4000, "stats": {"total_inactive_file": 200}},
        "networks": {"eth0": {"rx_bytes": 10, "tx_bytes": 20}, "eth1": {"rx_bytes": 1, "tx_bytes": 2}},
        "blkio_stats": {"io_service_bytes_recursive": [
            {"op": "Read", "value": 5}, {"op": "Write", "value": 7}, {"op": "read", "value": 1},
            {"op": "Total", "value": 13}]},
        "pids_stats": {"current": 3},
    }
    figures = stats_figures(raw)
    assert figures["cpu_percent"] == 40.0  # 200 / 1000 * 2 CPUs * 100
    assert figures["memory"] == {"usage": 800, "limit": 4000, "percent": 20.0}
    assert figures["network"] == {"rx_bytes": 11, "tx_bytes": 22}
    assert figures["block_io"] == {"read_bytes": 6, "write_bytes": 7}
    assert figures["pids"] == 3


def test_stats_figures_use_cgroup_v2_inactive_file_and_survive_an_empty_sample():
    figures = stats_figures({"memory_stats": {"usage": 500, "limit": 0,
                                              "stats": {"inactive_file": 100}}})
    assert figures["memory"] == {"usage": 400, "limit": 0, "percent": 0.0}
    assert figures["cpu_percent"] == 0.0


@pytest.mark.parametrize("value, expected", [
    ("1700000000", 1700000000.0), ("1700000000.5", 1700000000.5), ("10m", 1000.0 - 600),
    ("1.5h", 1000.0 - 5400), ("500ms", 999.5), ("2023-11-14T22:13:20Z", 1700000000.0),
    ("2023-11-14T23:13:20+01:00", 1700000000.0),
])
def test_event_times_are_read_like_docker_events(value, expected):
    assert parse_event_time(value, now=1000.0) == expected


@pytest.mark.parametrize("value", ["yesterday", "10 minutes", "2023-11-14T22:13:20", ""])
def test_event_times_without_a_zone_or_unit_are_refused(value):
    with pytest.raises(ValueError):
        parse_event_time(value, now=1000.0)


def test_event_view_keeps_type_action_actor_and_time():
    raw = {"status": "start", "id": "abc", "from": "img", "Type": "container", "Action": "start",
           "Actor": {"ID": "abc", "Attributes": {"name": "web"}}, "scope": "local",
           "time": 1700000000, "timeNano": 1700000000123456789}
    assert event_view(raw) == {"type": "container", "action": "start",
                               "actor": {"id": "abc", "attributes": {"name": "web"}},
                               "scope": "local", "time": 1700000000,
                               "time_nano": 1700000000123456789}


def test_exec_spec_defaults_and_bounds():
    spec = ExecSpecSchema().load({"cmd": "sh -c 'echo hi'"})
    assert spec["cmd"] == ["sh", "-c", "echo hi"] and spec["timeout"] == 30.0
    for bad in ({"cmd": []}, {"cmd": ["ls"], "timeout": 301}, {"cmd": ["ls"], "shell": True},
                {"cmd": ["ls"], "workdir": "relative"}):
        with pytest.raises(ValidationError):
            ExecSpecSchema().load(bad)


def test_update_needs_a_change_and_validates_like_provision():
    assert UpdateSpecSchema().load({"memory": "96m"})["memory"] == 96 << 20
    for bad in ({}, {"memory": "lots"}, {"cpus": 0}, {"restart_policy": {"name": "sometimes"}}):
        with pytest.raises(ValidationError):
            UpdateSpecSchema().load(bad)


def test_bulk_remove_refuses_no_filter_unless_all():
    with pytest.raises(ValidationError) as refused:
        BulkRemoveArgsSchema().load({"force": "true"})
    assert "all" in refused.value.messages
    assert BulkRemoveArgsSchema().load({"all": "true"})["all"] is True
    assert BulkRemoveArgsSchema().load({"label": ["a=b"]})["managed_only"] is True


def test_privileged_exec_breaks_no_privileged_unless_an_admin_is_excused():
    with pytest.raises(PolicyViolationError) as refused:
        Policy(bind_roots=()).enforce_exec({"cmd": ["id"], "privileged": True}, is_admin=True)
    assert refused.value.extra["rule"] == "no-privileged"
    Policy(bind_roots=()).enforce_exec({"cmd": ["id"]})
    excused = Policy(bind_roots=(), admin_exceptions=frozenset({"no-privileged"}))
    excused.enforce_exec({"cmd": ["id"], "privileged": True}, is_admin=True)
    with pytest.raises(PolicyViolationError):
        excused.enforce_exec({"cmd": ["id"], "privileged": True}, is_admin=False)
