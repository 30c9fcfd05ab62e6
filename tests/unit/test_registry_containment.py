"""Registry URLs, where credentials may go, and what a Dockerfile asks the engine to fetch."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from app.core.errors import InvalidInputError, PolicyViolationError
from app.jobs.spool import saved_image_names
from app.registry.registries import parse_registry_url, require_reference_in_registry
from app.security import dockerfiles
from app.security.policy import Policy, enforce_image_source, enforce_local_name, registry_host

ALLOWING = Policy(bind_roots=(), allowed_registries=("127.0.0.1:5000",))


# -- registry urls ---------------------------------------------------------------------------

@pytest.mark.parametrize("url, normal", [
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("https://Registry.Example.com/", "https://registry.example.com"),
    ("https://bücher.example:443", "https://xn--bcher-kva.example:443"),
    ("http://[::1]:5000", "http://[::1]:5000"),
])
def test_registry_url_parses_to_scheme_host_and_port(url, normal):
    assert parse_registry_url(url) == normal


@pytest.mark.parametrize("url", [
    "https://è+Æ", "http://user:pass@host", "http://user@host:5000", "ftp://host",
    "host:5000", "127.0.0.1:5000", "http://host/v2", "http://host?x=1", "http://host#f",
    "http://host?", "http://host:0", "http://host:65536", "http://host:port", "http://host:",
    "http://", "http://-host", "http://under_score", "http://host name", " http://host",
    "http://host\n", "http://" + "a" * 64 + ".example",
])
def test_registry_url_that_is_not_scheme_host_port_is_refused_on_field_url(url):
    with pytest.raises(InvalidInputError) as refused:
        parse_registry_url(url)
    assert list(refused.value.extra["errors"]) == ["url"]


# -- credentials go to their own registry ----------------------------------------------------

LOCAL = {"name": "local", "url": "http://127.0.0.1:5000"}


@pytest.mark.parametrize("image", ["127.0.0.1:5000/team/web:1", "127.0.0.1:5000/web@sha256:"
                                   + "a" * 64])
def test_credentials_are_offered_to_the_registry_the_image_lives_in(image):
    require_reference_in_registry(image, LOCAL)


@pytest.mark.parametrize("image", ["127.0.0.1:5001/team/web:1", "evil.example/team/web",
                                   "busybox", "team/web:1", "localhost/web"])
def test_credentials_are_never_offered_to_another_registry(image):
    with pytest.raises(InvalidInputError) as refused:
        require_reference_in_registry(image, LOCAL)
    assert list(refused.value.extra["errors"]) == ["registry"]


def test_docker_hub_aliases_are_one_registry():
    assert registry_host("index.docker.io") == registry_host("Docker.IO") == "docker.io"
    require_reference_in_registry("library/busybox", {"name": "hub",
                                                      "url": "https://registry-1.docker.io"})


# -- allow-list: sources and local names ------------------------------------------------------

def test_an_image_from_an_allowed_registry_passes_and_another_is_refused():
    enforce_image_source(ALLOWING, "127.0.0.1:5000/team/web:1", False, "pull")
    with pytest.raises(PolicyViolationError) as refused:
        enforce_image_source(ALLOWING, "busybox", False, "pull")
    assert refused.value.extra["rule"] == "allowed-registries"


def test_admins_are_bound_by_the_allow_list_unless_excepted():
    with pytest.raises(PolicyViolationError):
        enforce_image_source(ALLOWING, "busybox", True, "pull")
    excepted = Policy(bind_roots=(), allowed_registries=("127.0.0.1:5000",),
                      admin_exceptions=frozenset({"allowed-registries"}))
    enforce_image_source(excepted, "busybox", True, "pull")
    with pytest.raises(PolicyViolationError):
        enforce_image_source(excepted, "busybox", False, "pull")


def test_a_name_in_an_allowed_namespace_needs_an_image_of_allowed_origin():
    with pytest.raises(PolicyViolationError) as refused:
        enforce_local_name(ALLOWING, "127.0.0.1:5000/team/web", False, False, "tag")
    assert refused.value.extra["rule"] == "allowed-registries"
    enforce_local_name(ALLOWING, "127.0.0.1:5000/team/web", True, False, "tag")
    enforce_local_name(ALLOWING, "elsewhere/web", False, False, "tag")


def test_without_an_allow_list_any_local_name_is_fine():
    enforce_local_name(Policy(bind_roots=()), "127.0.0.1:5000/x", False, False, "load")


def test_saved_image_names_reads_every_naming_file(tmp_path: Path):
    path = tmp_path / "save.tar"
    files = {"manifest.json": [{"RepoTags": ["127.0.0.1:5000/a:1"]}],
             "repositories": {"127.0.0.1:5000/b": {"2": "x"}},
             "index.json": {"manifests": [{"annotations": {
                 "io.containerd.image.name": "127.0.0.1:5000/c:3"}}]}}
    with tarfile.open(path, "w") as tar:
        for name, data in [*files.items(), ("manifest.json", [{"RepoTags": ["d:4"]}])]:
            raw = json.dumps(data).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    assert sorted(saved_image_names(path)) == ["127.0.0.1:5000/a:1", "127.0.0.1:5000/b:2",
                                               "127.0.0.1:5000/c:3", "d:4"]


# -- Dockerfiles ------------------------------------------------------------------------------

def remote(text: str) -> list[str]:
    return [source for _, source in dockerfiles.remote_sources(dockerfiles.instructions(text))]


@pytest.mark.parametrize("text, source", [
    ("FROM x\nADD https://example.com/a /a\n", "https://example.com/a"),
    ("FROM x\nadd HTTP://example.com/a /a\n", "HTTP://example.com/a"),
    ("FROM x\nADD\thttp://example.com/a\t/a\n", "http://example.com/a"),
    ("FROM x\nAD\\\nD http://example.com/a /a\n", "http://example.com/a"),
    ("FROM x\nADD \\\n  # a comment\n  http://example.com/a \\\n  /a\n", "http://example.com/a"),
    ("# escape=`\nFROM x\nADD `\n http://example.com/a /a\n", "http://example.com/a"),
    ("FROM x\nADD --chown=1 git@github.com:a/b.git /src\n", "git@github.com:a/b.git"),
    ('FROM x\nADD ["https://example.com/a", "/a"]\n', "https://example.com/a"),
    ("FROM x\nONBUILD ADD https://example.com/a /a\n", "https://example.com/a"),
    ("FROM x\nARG U=https://example.com/a\nADD $U /a\n", "$U"),
])
def test_add_of_a_url_is_found_through_case_continuations_and_forms(text, source):
    assert remote(text) == [source]


def test_copy_and_add_of_context_files_fetch_nothing():
    assert remote("FROM x\nADD a.tar /a\nCOPY --from=build /out /out\n"
                  "COPY http-notes.txt /n\nRUN echo ADD https://x\n") == []


def bases(text: str, args: dict[str, str] | None = None) -> list[str]:
    return [b.reference for b in dockerfiles.base_images(dockerfiles.instructions(text),
                                                         args or {})]


def test_from_is_expanded_with_arg_defaults_and_given_build_args():
    text = ("ARG REG=127.0.0.1:5000\nARG TAG\nFROM ${REG}/team/base:${TAG:-1} AS build\n"
            "FROM build\nFROM $REG/other\nCOPY --from=build /a /a\nCOPY --from=0 /a /a\n"
            "COPY --from=evil.example/tools /t /t\n")
    assert bases(text) == ["127.0.0.1:5000/team/base:1", "127.0.0.1:5000/other",
                           "evil.example/tools"]
    assert bases(text, {"REG": "evil.example", "TAG": "2"})[0] == "evil.example/team/base:2"


def test_a_build_arg_not_declared_before_from_is_not_used_by_from():
    assert bases("FROM ${IMG:-127.0.0.1:5000/x}\n", {"IMG": "evil.example/y"}) == [
        "127.0.0.1:5000/x"]


def test_a_from_that_cannot_be_expanded_for_certain_is_refused_on_field_dockerfile():
    with pytest.raises(InvalidInputError) as refused:
        bases("ARG A\nFROM ${A?missing}\n")
    assert list(refused.value.extra["errors"]) == ["dockerfile"]


def test_later_stage_names_and_platform_flags_are_read_like_the_builder():
    assert bases("FROM --platform=linux/amd64 scratch AS Base\nFROM base\n") == ["scratch"]
