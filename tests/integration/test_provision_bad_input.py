"""Bad provision specs are refused up front with a problem, and nothing is created."""

from __future__ import annotations

import pytest

from tests.integration.helpers import BUSYBOX


def _count(engine) -> int:
    return len(engine.containers.list(all=True, sparse=True))


@pytest.mark.parametrize("spec, field", [
    ({"image": ""}, "image"),
    ({"image": "   "}, "image"),
    ({}, "image"),
    ({"image": BUSYBOX, "ports": ["70000"]}, "ports"),
    ({"image": BUSYBOX, "ports": [{"container_port": 0}]}, "ports"),
    ({"image": BUSYBOX, "ports": ["80:80:80:80"]}, "ports"),
    ({"image": BUSYBOX, "ports": ["abc"]}, "ports"),
    ({"image": BUSYBOX, "ports": ["18080:80", "18080:81"]}, "ports"),
    ({"image": BUSYBOX, "memory": "lots"}, "memory"),
    ({"image": BUSYBOX, "HostConfig": {"Privileged": True}}, "HostConfig"),
    ({"image": BUSYBOX, "binds": ["/:/host"]}, "binds"),
    ({"image": BUSYBOX, "volumes": ["relative:path:rx"]}, "volumes"),
    ({"image": BUSYBOX, "restart_policy": {"name": "sometimes"}}, "restart_policy"),
])
def test_invalid_spec_is_422_naming_the_field(operator, engine, spec, field):
    before = _count(engine)
    response = operator.post("/hosts/local/containers", json=spec)
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422 and field in problem["errors"]
    assert _count(engine) == before


@pytest.mark.parametrize("extra, rule", [
    ({"privileged": True}, "no-privileged"),
    ({"cap_add": ["SYS_ADMIN"]}, "no-cap-add"),
    ({"devices": ["/dev/kmsg:/dev/kmsg"]}, "no-devices"),
    ({"network": "host"}, "no-host-network"),
    ({"pid_mode": "host"}, "no-host-pid"),
    ({"ipc_mode": "host"}, "no-host-ipc"),
    ({"uts_mode": "host"}, "no-host-uts"),
    ({"sysctls": {"net.ipv4.ip_forward": "1"}}, "no-sysctls"),
    ({"security_opt": ["seccomp=unconfined"]}, "no-security-opt"),
    ({"volumes": ["/etc:/host-etc:ro"]}, "bind-roots"),
    ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}, "no-engine-socket"),
    ({"volumes": ["/var/run:/r"]}, "no-engine-socket"),
])
def test_policy_violation_is_403_naming_the_rule(operator, admin, engine, extra, rule):
    before = _count(engine)
    for api in (operator, admin):  # no admin exceptions are configured in the suite
        response = api.post("/hosts/local/containers", json={"image": BUSYBOX, **extra})
        assert response.status_code == 403, response.text
        assert response.json()["rule"] == rule
        assert response.headers["Content-Type"] == "application/problem+json"
    assert _count(engine) == before


def test_dotdot_escape_from_a_bind_root_is_403(operator, engine, bind_root):
    before = _count(engine)
    response = operator.post("/hosts/local/containers", json={
        "image": BUSYBOX, "volumes": [f"{bind_root}/../../etc:/x:ro"]})
    assert response.status_code == 403
    assert response.json()["rule"] == "bind-roots"
    assert _count(engine) == before


def test_viewer_cannot_provision(viewer, engine):
    before = _count(engine)
    response = viewer.post("/hosts/local/containers", json={"image": BUSYBOX})
    assert response.status_code == 403
    assert _count(engine) == before


def test_provision_on_unknown_host_is_404(operator):
    response = operator.post("/hosts/nowhere/containers", json={"image": BUSYBOX})
    assert response.status_code == 404
    assert "nowhere" in response.json()["detail"]
