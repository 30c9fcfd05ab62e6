"""The container policy, rule by rule."""

from __future__ import annotations

import pytest

from app.errors import PolicyViolationError
from app.policy import Policy, image_registry

POLICY = Policy(bind_roots=("/srv/dockyard", "/data/apps/"), engine_sockets=(
    "/var/run/docker.sock", "/run/docker.sock", "/opt/dy/run/docker.sock"))


def rules(spec: dict, is_admin: bool = False, policy: Policy = POLICY) -> list[str]:
    return [v.rule for v in policy.violations({"image": "busybox", **spec}, is_admin)]


def bind(source: str) -> dict:
    return {"volumes": [{"type": "bind", "source": source, "target": "/x", "read_only": True}]}


def test_a_plain_spec_breaks_no_rule():
    assert rules({"volumes": [{"type": "volume", "source": "data", "target": "/d",
                               "read_only": False}], "cap_drop": ["ALL"], "network": "bridge"}) == []


@pytest.mark.parametrize("spec, rule", [
    ({"privileged": True}, "no-privileged"),
    ({"network": "host"}, "no-host-network"),
    ({"pid_mode": "host"}, "no-host-pid"),
    ({"ipc_mode": "host"}, "no-host-ipc"),
    ({"uts_mode": "host"}, "no-host-uts"),
    ({"cap_add": ["NET_ADMIN"]}, "no-cap-add"),
    ({"devices": ["/dev/sda"]}, "no-devices"),
    ({"sysctls": {"kernel.shmmax": "1"}}, "no-sysctls"),
    ({"security_opt": ["apparmor=unconfined"]}, "no-security-opt"),
])
def test_each_privilege_is_its_own_rule(spec, rule):
    assert rules(spec) == [rule]


@pytest.mark.parametrize("source", ["/srv/dockyard", "/srv/dockyard/web", "/data/apps/x/y"])
def test_binds_under_a_root_are_allowed(source):
    assert rules(bind(source)) == []


@pytest.mark.parametrize("source, rule", [
    ("/etc", "bind-roots"),
    ("/srv/dockyard-evil", "bind-roots"),
    ("/srv/dockyard/../../etc", "bind-roots"),
    ("/srv/dockyard/a/../b", "bind-roots"),
    ("/var/run/docker.sock", "no-engine-socket"),
    ("/run", "no-engine-socket"),
    ("/", "no-engine-socket"),
    ("/opt/dy/run", "no-engine-socket"),
])
def test_binds_outside_roots_or_exposing_the_socket_are_refused(source, rule):
    assert rules(bind(source)) == [rule]


def test_every_violation_is_reported_and_the_first_names_the_error():
    spec = {"image": "busybox", "privileged": True, "cap_add": ["ALL"], **bind("/etc")}
    with pytest.raises(PolicyViolationError) as caught:
        POLICY.enforce(spec)
    problem = caught.value.to_problem()
    assert problem["status"] == 403 and problem["rule"] == "no-privileged"
    assert [v["rule"] for v in problem["violations"]] == ["no-privileged", "no-cap-add",
                                                          "bind-roots"]


def test_admin_exceptions_apply_only_to_admins_and_only_to_named_rules():
    policy = Policy(bind_roots=("/srv",), admin_exceptions=frozenset({"no-privileged"}))
    spec = {"privileged": True, "cap_add": ["X"]}
    assert rules(spec, is_admin=True, policy=policy) == ["no-cap-add"]
    assert rules(spec, is_admin=False, policy=policy) == ["no-privileged", "no-cap-add"]


def test_allowed_registries_by_reference_domain():
    policy = Policy(bind_roots=(), allowed_registries=("127.0.0.1:5000",))
    assert rules({"image": "127.0.0.1:5000/team/web:1"}, policy=policy) == []
    assert rules({"image": "busybox"}, policy=policy) == ["allowed-registries"]
    assert rules({"image": "evil.example/x"}, policy=policy) == ["allowed-registries"]


@pytest.mark.parametrize("reference, domain", [
    ("busybox", "docker.io"), ("library/busybox:1", "docker.io"),
    ("localhost/x", "localhost"), ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000"),
    ("registry.example.com/x@sha256:ab", "registry.example.com"),
])
def test_image_registry_resolves_like_docker(reference, domain):
    assert image_registry(reference) == domain


def test_resolved_bind_through_symlink_outside_roots_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok").mkdir()
    (root / "escape").symlink_to("/etc")
    policy = Policy(bind_roots=(str(root),))
    assert policy.check_resolved_bind(str(root / "ok")) == []
    assert [v.rule for v in policy.check_resolved_bind(str(root / "escape"))] == ["bind-roots"]
