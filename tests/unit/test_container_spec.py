"""The provision spec schema: docker's short forms and what it refuses."""

from __future__ import annotations

import pytest
from marshmallow import ValidationError

from app.engine.provision import create_kwargs
from schemas.containers import (
    KillArgsSchema,
    LogsArgsSchema,
    ProvisionSpecSchema,
    parse_duration,
    parse_port,
    parse_size,
    parse_volume,
)


def load(**spec):
    return ProvisionSpecSchema().load({"image": "busybox", **spec})


@pytest.mark.parametrize("short, expected", [
    ("8080", {"container_port": 8080, "host_port": None, "protocol": "tcp", "host_ip": None}),
    ("18080:8080", {"container_port": 8080, "host_port": 18080, "protocol": "tcp", "host_ip": None}),
    ("18080:8080/udp", {"container_port": 8080, "host_port": 18080, "protocol": "udp",
                        "host_ip": None}),
    ("127.0.0.1:18080:8080", {"container_port": 8080, "host_port": 18080, "protocol": "tcp",
                              "host_ip": "127.0.0.1"}),
    ("127.0.0.1::8080", {"container_port": 8080, "host_port": None, "protocol": "tcp",
                         "host_ip": "127.0.0.1"}),
    ("[::1]:18080:8080", {"container_port": 8080, "host_port": 18080, "protocol": "tcp",
                          "host_ip": "::1"}),
])
def test_port_short_forms_parse_like_docker(short, expected):
    assert parse_port(short) == expected


@pytest.mark.parametrize("bad", ["", "abc", "1:2:3:4", "80/", "-1", "80:80/"])
def test_malformed_port_short_forms_are_refused(bad):
    with pytest.raises(ValidationError):
        parse_port(bad)


@pytest.mark.parametrize("ports", [["0"], ["65536"], ["70000:80"], [{"container_port": 80,
                                                                     "protocol": "icmp"}]])
def test_ports_outside_range_or_protocol_are_invalid(ports):
    with pytest.raises(ValidationError) as caught:
        load(ports=ports)
    assert "ports" in caught.value.messages


def test_same_host_port_twice_is_invalid_but_different_protocols_are_fine():
    with pytest.raises(ValidationError):
        load(ports=["18080:80", "18080:81"])
    assert len(load(ports=["18080:80/tcp", "18080:80/udp"])["ports"]) == 2


@pytest.mark.parametrize("short, expected", [
    ("/srv/x:/www:ro", {"source": "/srv/x", "target": "/www", "read_only": True, "type": "bind"}),
    ("/srv/x:/www", {"source": "/srv/x", "target": "/www", "read_only": False, "type": "bind"}),
    ("data:/data:rw", {"source": "data", "target": "/data", "read_only": False, "type": "volume"}),
    ("/cache", {"source": None, "target": "/cache", "read_only": False, "type": "volume"}),
])
def test_volume_short_forms_parse_like_docker(short, expected):
    assert parse_volume(short) == expected


@pytest.mark.parametrize("bad", [["a:b:c:d"], ["/x:/y:rx"], ["data:relative"],
                                 [{"source": "rel/path", "target": "/x", "type": "bind"}]])
def test_malformed_volumes_are_invalid(bad):
    with pytest.raises(ValidationError) as caught:
        load(volumes=bad)
    assert "volumes" in caught.value.messages


@pytest.mark.parametrize("text, size", [("256m", 256 << 20), ("1g", 1 << 30), ("512MiB", 512 << 20),
                                        ("1024", 1024), (2048, 2048), ("1.5k", 1536)])
def test_sizes_parse_like_docker_memory(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "-1m", "1x", True])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValidationError):
        parse_size(bad)


def test_durations():
    assert parse_duration("30s") == 30 and parse_duration("1m") == 60
    assert parse_duration("500ms") == 0.5 and parse_duration(2) == 2
    with pytest.raises(ValidationError):
        parse_duration("soon")


def test_unknown_fields_and_blank_image_are_refused():
    with pytest.raises(ValidationError) as caught:
        ProvisionSpecSchema().load({"image": " ", "HostConfig": {}})
    assert set(caught.value.messages) == {"image", "HostConfig"}


def test_command_string_is_split_like_a_shell_and_env_list_becomes_a_map():
    spec = load(command="sh -c 'echo hi'", env=["A=1", "B=x=y"])
    assert spec["command"] == ["sh", "-c", "echo hi"]
    assert spec["env"] == {"A": "1", "B": "x=y"}


def test_create_kwargs_carry_only_whitelisted_fields_and_dockyard_labels():
    spec = load(name="web", ports=["18080:8080", "127.0.0.1::53/udp"], volumes=["/srv/x:/w:ro"],
                memory="64m", cpus=0.5, restart_policy={"name": "always"}, labels={"a": "b"})
    kwargs = create_kwargs(spec, "JOB1", "edge-1,edge-2")
    assert kwargs["labels"] == {"a": "b", "dockyard.managed": "true", "dockyard.job": "JOB1",
                                "dockyard.scope": "edge-1,edge-2"}
    host = kwargs["host_config"]
    assert host["port_bindings"] == {"8080/tcp": [18080], "53/udp": [("127.0.0.1", "")]}
    assert host["mem_limit"] == 64 << 20 and host["nano_cpus"] == 500_000_000
    assert host["restart_policy"] == {"Name": "always", "MaximumRetryCount": 0}
    assert "privileged" not in host and "cap_add" not in host
    assert kwargs["ports"] == [(8080, "tcp"), (53, "udp")]


@pytest.mark.parametrize("signal, ok", [("SIGTERM", True), ("TERM", True), ("9", True),
                                        ("NOPE", False), ("99", False)])
def test_kill_signal_names(signal, ok):
    if ok:
        assert KillArgsSchema().load({"signal": signal})["signal"] == signal
    else:
        with pytest.raises(ValidationError):
            KillArgsSchema().load({"signal": signal})


def test_logs_tail_must_be_all_or_non_negative():
    assert LogsArgsSchema().load({"tail": "10"})["tail"] == "10"
    with pytest.raises(ValidationError):
        LogsArgsSchema().load({"tail": "-5"})
