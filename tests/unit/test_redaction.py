"""What viewers (and everyone, for Dockyard's own containers) may not read."""

from __future__ import annotations

from app.security.redaction import REDACTED, redact_for

INSPECT = {
    "Id": "abc", "Args": ["-c", "run --password=hunter2"],
    "Config": {"Env": ["DB_PASSWORD=hunter2", "MODE=prod"], "Cmd": ["sh", "-c", "run --password=hunter2"],
               "Labels": {"team": "a", "api-token": "tok-123", "dockyard.managed": "true"}},
}


def test_viewers_see_names_but_no_environment_values_secret_labels_or_arguments():
    seen = redact_for("viewer", "inspect", INSPECT)
    assert seen["Config"]["Env"] == [f"DB_PASSWORD={REDACTED}", f"MODE={REDACTED}"]
    assert seen["Config"]["Labels"] == {"team": "a", "api-token": REDACTED,
                                        "dockyard.managed": "true"}
    assert seen["Config"]["Cmd"] == ["sh", REDACTED, REDACTED]
    assert "hunter2" not in repr(seen) and "tok-123" not in repr(seen)
    assert INSPECT["Config"]["Env"][0] == "DB_PASSWORD=hunter2"  # the input is not changed


def test_operators_see_their_containers_whole():
    assert redact_for("operator", "inspect", INSPECT) == INSPECT
    assert redact_for("admin", "inspect", INSPECT) == INSPECT


def test_nobody_sees_the_environment_of_dockyards_own_containers():
    system = {**INSPECT, "Config": {**INSPECT["Config"],
                                    "Labels": {"dockyard.system": "true"}}}
    for role in ("viewer", "operator", "admin"):
        assert "hunter2" not in repr(redact_for(role, "inspect", system)["Config"]["Env"])


def test_listings_top_and_events_redact_for_viewers_only():
    rows = [{"id": "a", "labels": {"db-secret": "s3", "team": "a"}}]
    assert redact_for("viewer", "summary", rows) == [{"id": "a", "labels": {
        "db-secret": REDACTED, "team": "a"}}]
    assert redact_for("operator", "summary", rows) == rows
    top = {"titles": ["UID", "PID", "CMD"], "processes": [["root", "1", "app --token=x y"],
                                                          ["root", "2", "sleep"]]}
    assert redact_for("viewer", "top", top)["processes"] == [["root", "1", f"app {REDACTED}"],
                                                             ["root", "2", "sleep"]]
    event = {"Type": "container", "Actor": {"ID": "x", "Attributes": {"my-password": "p",
                                                                      "name": "web"}}}
    assert redact_for("viewer", "event", event)["Actor"]["Attributes"] == {
        "my-password": REDACTED, "name": "web"}
    normalized = {"type": "container", "actor": {"id": "x", "attributes": {"auth": "p"}}}
    assert redact_for("viewer", "event", [normalized])[0]["actor"]["attributes"] == {
        "auth": REDACTED}
