"""What an agent's Redis user may reach, and where a host's keys are named (no Redis needed)."""

from __future__ import annotations

import fnmatch

from app.core.config import Settings
from app.fleet.agent import worker_commands, worker_env
from app.jobs.dispatch import new_reply_id, reply_key
from app.jobs.pipes import _credit_key, _data_key, new_pipe_id
from app.jobs.records import events_key, job_key
from app.security import agent_access
from app.sessions.relay import client_beat_key, output_pipe, worker_beat_key

SETTINGS = Settings(redis_url="redis://127.0.0.1:6379/7", secret_key="unit-secret")


def reachable(host: str, key: str) -> bool:
    """Whether ``host``'s ACL rules give it ``key`` (Redis matches key patterns like fnmatch)."""
    patterns = [rule[1:] for rule in agent_access.acl_rules(host, "0" * 64) if rule.startswith("~")]
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def test_a_host_reaches_its_queues_lanes_and_prefix_only():
    own = [job_key("J", "edge"), events_key("J", "edge"), "host.edge.ops", "host.edge.query",
           "host.edge.ops\x06\x169", "_kombu.binding.host.edge.ops",
           "_kombu.binding_permanent.host.edge.query", "dy:lane:host.edge.ops",
           reply_key(new_reply_id("edge")), _data_key(new_pipe_id("edge")),
           worker_beat_key("S", "edge"), _data_key(output_pipe("S", "edge"))]
    assert all(reachable("edge", key) for key in own)
    # A host whose name extends another's (edge -> edge.b, edge-b) stays out of reach.
    foreign = [job_key("J", "edge.b"), "host.edge.b.ops", "dy:lane:host.edge.b.ops",
               "_kombu.binding.host.edge.b.query", "_kombu.binding_permanent.host.edge.b.ops",
               "_kombu.binding_deadlines", job_key("J"), "dy:jobs", "dy:jobs:host",
               "dy:hosts", "dy:tokens:by-id", "dy:registries", "engine.ops", "dy:events",
               "dy:audit", "unacked", client_beat_key("S", "edge-b"), "dy:lane:engine.query"]
    assert [key for key in foreign if reachable("edge", key)] == []


def test_commands_are_data_only():
    rules = agent_access.acl_rules("edge", "ab" * 32)
    assert rules[:4] == ["reset", "on", "#" + "ab" * 32, "resetchannels"]
    for removed in ("-@dangerous", "-@admin", "-@pubsub", "-keys", "-scan", "-randomkey",
                    "-function", "-fcall"):
        assert removed in rules
    assert rules.index("-@dangerous") > rules.index("+@keyspace")


def test_ids_that_name_a_host_keep_its_keys_under_its_prefix():
    assert reply_key("edge/abc") == "dy:h:edge:reply:abc"
    assert reply_key("abc") == "dy:reply:abc"
    assert _credit_key("edge/abc") == "dy:h:edge:pipe:abc:credit"
    assert job_key("J") == "dy:job:J" and job_key("J", "") == "dy:job:J"


def test_credentials_carry_a_login_a_derived_key_and_only_a_hash_is_kept():
    stored, shown = agent_access.new_access(SETTINGS, "edge")
    assert shown["redis_url"].startswith("redis://dockyard-agent-edge%407:")
    assert shown["redis_url"].endswith("@127.0.0.1:6379/7")
    assert shown["agent_key"] == agent_access.agent_key(SETTINGS, "edge", stored["key_salt"])
    assert shown["agent_key"] != agent_access.agent_key(SETTINGS, "other", stored["key_salt"])
    assert set(stored) == {"password_sha256", "key_salt"}
    sealed = agent_access.seal_for_agent(shown["agent_key"], {"password": "p"})
    assert agent_access.unseal_as_agent(shown["agent_key"], sealed) == {"password": "p"}


def test_the_agent_hands_its_workers_no_secret_key_nor_data_password(monkeypatch):
    monkeypatch.setenv("DOCKYARD_SECRET_KEY", "unit-secret")
    monkeypatch.delenv("DOCKYARD_SECRET_KEY_FILE", raising=False)
    env = worker_env({"DOCKYARD_SECRET_KEY": "unit-secret", "DOCKYARD_REDIS_PASSWORD": "data",
                      "DOCKYARD_REDIS_URL": "redis://u:p@127.0.0.1:6379/7"}, "edge",
                     "unix:///var/run/docker.sock", 2)
    assert "DOCKYARD_SECRET_KEY" not in env and "DOCKYARD_REDIS_PASSWORD" not in env
    assert env["DOCKYARD_TASK_VERIFY_KEY"] and env["DOCKYARD_AGENT_HOST"] == "edge"
    for command in worker_commands("edge", 1, 2):
        assert {"--without-gossip", "--without-mingle", "--without-heartbeat"} <= set(command)
