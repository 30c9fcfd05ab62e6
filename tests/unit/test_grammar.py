"""The docker-CLI grammar: every command, short forms, and errors that read like docker's."""

from __future__ import annotations

import pytest

from app.integrations.grammar import GrammarError, describe_job, render
from app.integrations.grammar import parse as parse_with
from schemas.containers import ProvisionSpecSchema


def parse(text):
    """Parse as chat and the CLI do: with the API's own check of a run spec."""
    return parse_with(text, check_spec=ProvisionSpecSchema().load)


def test_run_yields_the_provision_spec_the_api_takes():
    command = parse("run edge-1 -d -p 18080:80 -p 53:53/udp -v /srv/dockyard/x:/x:ro "
                    "-e MODE=prod --name web --restart on-failure:3 --volumes-from data:ro "
                    "registry.local:5000/team/web:1.4 httpd -f -p 80")
    assert (command.method, command.path) == ("POST", "/hosts/edge-1/containers")
    assert command.body == {
        "image": "registry.local:5000/team/web:1.4", "command": ["httpd", "-f", "-p", "80"],
        "name": "web", "ports": ["18080:80", "53:53/udp"], "volumes": ["/srv/dockyard/x:/x:ro"],
        "volumes_from": ["data:ro"], "env": {"MODE": "prod"},
        "restart_policy": {"name": "on-failure", "maximum_retry_count": 3}}
    loaded = ProvisionSpecSchema().load(command.body)
    assert loaded["ports"][1] == {"container_port": 53, "host_port": 53, "protocol": "udp",
                                  "host_ip": None}
    assert loaded["volumes"][0]["read_only"] is True and loaded["volumes"][0]["type"] == "bind"


def test_run_flags_after_the_image_belong_to_the_container_command():
    command = parse(["run", "local", "busybox", "sh", "-c", "echo hi", "--name", "x"])
    assert command.body["command"] == ["sh", "-c", "echo hi", "--name", "x"]
    assert "name" not in command.body


def test_run_accepts_docker_short_and_equals_forms():
    command = parse("run local -dp 8080:80 --name=web -eA=1 img")
    assert command.body == {"image": "img", "ports": ["8080:80"], "name": "web",
                            "env": {"A": "1"}}


@pytest.mark.parametrize(("text", "method", "path", "query", "body"), [
    ("ps local", "GET", "/hosts/local/containers", {}, None),
    ("ps local -a", "GET", "/hosts/local/containers", {"all": "true"}, None),
    ("logs local web --tail 5", "GET", "/hosts/local/containers/web/logs", {"tail": "5"}, None),
    ("start local web", "POST", "/hosts/local/containers/web/start", {}, {}),
    ("stop local web -t 3", "POST", "/hosts/local/containers/web/stop", {}, {"timeout": 3}),
    ("restart local web", "POST", "/hosts/local/containers/web/restart", {}, {}),
    ("rm local web -f --yes", "DELETE", "/hosts/local/containers/web", {"force": "true"}, None),
    ("images local", "GET", "/hosts/local/images", {}, None),
    ("pull local busybox:1.36", "POST", "/hosts/local/images/pull", {},
     {"image": "busybox:1.36"}),
    ('build local --tag t:1 --dockerfile-inline "FROM scratch"', "POST", "/builds", {},
     {"host": "local", "tags": ["t:1"], "dockerfile": "FROM scratch"}),
    ("backup local web", "POST", "/hosts/local/containers/web/backups", {}, {}),
    ("restore 01BACKUP edge-2 --name web2", "POST", "/backups/01BACKUP/restore", {},
     {"host": "edge-2", "name": "web2", "replace": False}),
    ("jobs", "GET", "/jobs", {"limit": 10}, None),
    ("job 01JOB", "GET", "/jobs/01JOB", {}, None),
])
def test_every_command_maps_to_its_route(text, method, path, query, body):
    command = parse(text)
    assert (command.method, command.path, command.query, command.body) == (method, path, query,
                                                                           body)


def test_rm_is_destructive_and_confirmed_only_with_yes():
    assert parse("rm local web").destructive and not parse("rm local web").confirmed
    assert parse("rm local web --yes").confirmed


def test_restore_with_yes_replaces_an_existing_container():
    assert parse("restore 01B --yes").body == {"replace": True}
    assert parse("restore 01B").body == {"replace": False}


def test_help_is_answered_locally():
    assert parse("help").method == "" and "run HOST" in parse("help").text
    assert "--publish" in parse("help run").text
    assert "--publish" in parse("run --help").text


def test_path_segments_are_quoted():
    assert parse("logs local a/b").path == "/hosts/local/containers/a%2Fb/logs"


@pytest.mark.parametrize(("text", "error"), [
    ("run local", '"run" requires at least 2 arguments.'),
    ("ps", '"ps" requires exactly 1 argument.'),
    ("logs local", '"logs" requires exactly 2 arguments.'),
    ("ps local --nope", "unknown flag: --nope"),
    ("run local -x img", "unknown shorthand flag: 'x' in -x"),
    ("run local img --name", None),  # after IMAGE: the container's own argument
    ("run local --name", "flag needs an argument: --name"),
    ("logs local c --tail x", 'invalid argument "x" for "-n, --tail" flag'),
    ("run local --restart sometimes img", 'invalid argument "sometimes" for "--restart" flag'),
    ("run local -e FOO img", 'invalid argument "FOO" for "-e, --env" flag'),
    ("run local -p 99999:80 img", 'invalid argument "99999:80" for "-p, --publish" flag'),
    ("run local -v relative:dir img", 'invalid argument "relative:dir" for "-v, --volume" flag'),
    ("frobnicate local", "'frobnicate' is not a dockyard command."),
    ("build local --tag t", '"build" needs --dockerfile-inline'),
    ('run local "unterminated', "cannot parse the command line"),
])
def test_errors_read_like_docker(text, error):
    if error is None:
        parse(text)
        return
    with pytest.raises(GrammarError) as caught:
        parse(text)
    assert caught.value.message.startswith(error), caught.value.message


def test_render_ps_as_a_table():
    command = parse("ps local")
    text = render(command, [{"id": "a" * 64, "image": "img", "status": "Up 2 seconds",
                             "name": "web", "ports": [{"container_port": 80, "host_port": 18080,
                                                       "protocol": "tcp", "host_ip": None}]}])
    header, row = text.splitlines()
    assert header.split() == ["CONTAINER", "ID", "IMAGE", "STATUS", "PORTS", "NAMES"]
    assert row.startswith("a" * 12) and "0.0.0.0:18080->80/tcp" in row and row.endswith("web")


def test_describe_job_names_the_container_or_the_error():
    done = {"id": "01J", "kind": "containers.provision", "state": "succeeded", "host": "local",
            "target": "web", "result": {"id": "c" * 64, "name": "web", "ports": []}}
    assert describe_job(done) == ("job 01J containers.provision web on local: succeeded — "
                                  "container web cccccccccccc")
    failed = {**done, "state": "failed", "result": None,
              "error": {"title": "Conflict", "detail": "name in use"}}
    assert describe_job(failed).endswith("failed\nConflict: name in use")
