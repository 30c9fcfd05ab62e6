"""The container policy, rule by rule."""

from __future__ import annotations

import pytest

from app.core.errors import PolicyViolationError
from app.security.policy import Policy, image_registry

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


@pytest.mark.parametrize("network, rule", [
    ("host", "no-host-network"), ("HOST", "no-host-network"), (" Host", "no-host-network"),
    ("container:db", "no-container-namespace"), ("Container:db", "no-container-namespace"),
    ("a1b2c3d4e5f6", "allowed-networks"), ("team-net", "allowed-networks"),
    ("Bridge", "allowed-networks"),
])
def test_networks_are_an_allow_list(network, rule):
    assert rules({"network": network}) == [rule]


@pytest.mark.parametrize("network", [None, "bridge", "default", "none", "team-net"])
def test_bridge_none_and_listed_networks_pass(network):
    policy = Policy(bind_roots=(), allowed_networks=("team-net",))
    assert rules({"network": network}, policy=policy) == []


@pytest.mark.parametrize("field, value, rule", [
    ("pid_mode", "host", "no-host-pid"), ("pid_mode", "container:x", "no-container-namespace"),
    ("pid_mode", "private", "private-namespaces"),
    ("ipc_mode", "host", "no-host-ipc"), ("ipc_mode", "container:x", "no-container-namespace"),
    ("uts_mode", "HOST", "no-host-uts"), ("userns_mode", "host", "no-host-userns"),
    ("cgroupns", "host", "no-host-cgroupns"), ("ipc_mode", "weird", "private-namespaces"),
])
def test_namespace_modes_are_private_only(field, value, rule):
    assert rules({field: value}) == [rule]


@pytest.mark.parametrize("field, value", [
    ("ipc_mode", "private"), ("ipc_mode", "shareable"), ("ipc_mode", "none"),
    ("cgroupns", "private"), ("pid_mode", None), ("uts_mode", ""),
])
def test_private_namespace_modes_pass(field, value):
    assert rules({field: value}) == []


def test_labels_under_the_dockyard_prefix_are_reserved():
    assert rules({"labels": {"dockyard.system": "true"}}) == ["reserved-labels"]
    assert rules({"labels": {"dockyard.scope": "*"}}) == ["reserved-labels"]
    assert rules({"labels": {"dockyard.restored-from": "X", "team": "a"}}) == []


@pytest.mark.parametrize("volume, rule", [
    ({"Name": "v", "Driver": "local", "Options": {"type": "none", "o": "bind", "device": "/etc"}},
     "volume-options"),
    ({"Name": "v", "Driver": "local", "Options": {"type": "ext4", "device": "/dev/sda1"}},
     "volume-options"),
    ({"Name": "v", "Driver": "local", "Options": {"type": "tmpfs", "device": "/etc", "o": "bind"}},
     "volume-options"),
    ({"Name": "v", "Driver": "local", "Options": {"type": "nfs", "o": "addr=10.0.0.1"}},
     "volume-options"),
    ({"Name": "v", "Driver": "rexray"}, "volume-drivers"),
    ({"Name": "v", "Driver": "local", "Labels": {"dockyard.system": "true"}}, "dockyard-system"),
])
def test_named_volumes_must_be_private_local_ones(volume, rule):
    assert [v.rule for v in POLICY.volume_violations(volume)] == [rule]


def test_plain_and_tmpfs_volumes_pass_and_admins_can_vouch_for_others():
    assert POLICY.volume_violations({"Name": "v", "Driver": "local", "Options": None}) == []
    assert POLICY.volume_violations({"Name": "v", "Driver": "local", "Options": {
        "type": "tmpfs", "device": "tmpfs", "o": "size=64m"}}) == []
    vouched = Policy(bind_roots=(), allowed_volumes=("nfs-share",))
    assert vouched.volume_violations({"Name": "nfs-share", "Driver": "local",
                                      "Options": {"type": "nfs", "o": "addr=x"}}) == []


def _inspect(host_config=None, mounts=(), networks=("bridge",)):
    return {"HostConfig": {"NetworkMode": "default", **(host_config or {})},
            "Mounts": list(mounts), "NetworkSettings": {"Networks": {n: {} for n in networks}}}


def test_a_plain_live_container_passes():
    assert POLICY.live_violations(_inspect(mounts=[
        {"Type": "volume", "Name": "data"}, {"Type": "bind", "Source": "/srv/dockyard/web"}])) == []


@pytest.mark.parametrize("info, rule", [
    (_inspect(mounts=[{"Type": "bind", "Source": "/"}]), "no-engine-socket"),
    (_inspect(mounts=[{"Type": "bind", "Source": "/etc"}]), "bind-roots"),
    (_inspect({"NetworkMode": "host"}, networks=("host",)), "no-host-network"),
    (_inspect({"NetworkMode": "container:abc"}, networks=()), "no-container-namespace"),
    (_inspect({"PidMode": "host"}), "no-host-pid"),
    (_inspect({"IpcMode": "container:abc"}), "no-container-namespace"),
    (_inspect({"Privileged": True}), "no-privileged"),
    (_inspect({"CapAdd": ["SYS_ADMIN"]}), "no-cap-add"),
    (_inspect(networks=("bridge", "other-net")), "allowed-networks"),
])
def test_live_configuration_is_judged_by_the_same_rules(info, rule):
    assert rule in [v.rule for v in POLICY.live_violations(info)]
