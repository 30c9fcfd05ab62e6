"""Docker's image reference grammar, and how a reference is placed in a stored registry."""

from __future__ import annotations

import pytest
from marshmallow import ValidationError

from app.core.errors import InvalidInputError
from app.engine.images import explicit_registry, resolve_in_registry, split_reference
from schemas.images import (
    ImagePruneSchema,
    PullSpecSchema,
    TagSpecSchema,
    is_reference,
    is_repository,
    prune_filters,
)
from schemas.volumes import VolumeCreateSchema, VolumePruneSchema


@pytest.mark.parametrize("name", [
    "busybox", "team/web", "127.0.0.1:5000/team/web", "localhost/web", "localhost:5000/a/b/c",
    "registry.example.com/a_b/c__d/e-f/g.h", "Registry.Example.com/web", "a" * 255,
])
def test_repository_names_docker_accepts(name):
    assert is_repository(name)


@pytest.mark.parametrize("name", [
    "", "Team/web", "WEB", "team/web:1", "web/", "/web", "a//b", "-web", "web-", "we..b",
    "127.0.0.1:5000/", "host:port/web", "team web", "a" * 256, "web@sha256:" + "a" * 64,
])
def test_repository_names_docker_refuses(name):
    assert not is_repository(name)


@pytest.mark.parametrize("reference", [
    "busybox", "busybox:1.36", "127.0.0.1:5000/team/web:1", "127.0.0.1:5000/team/web",
    "team/web@sha256:" + "0" * 64, "web:v1.2_rc-3@sha256:" + "f" * 64,
])
def test_references_docker_pulls(reference):
    assert is_reference(reference)


@pytest.mark.parametrize("reference", [
    "busybox:", "busybox:-bad", "busybox:" + "t" * 129, "web@sha256:short", "Web:1",
    "web:1:2", "127.0.0.1:5000:x/web",
])
def test_references_docker_refuses(reference):
    assert not is_reference(reference)


@pytest.mark.parametrize("reference, registry", [
    ("busybox", None), ("team/web:1", None), ("127.0.0.1:5000/team/web:1", "127.0.0.1:5000"),
    ("localhost/web", "localhost"), ("registry.example.com/web", "registry.example.com"),
    ("docker.io/library/busybox", "docker.io"),
])
def test_explicit_registry_reads_the_first_component_only_when_it_is_a_host(reference, registry):
    assert explicit_registry(reference) == registry


def test_a_reference_without_registry_is_placed_in_the_named_one():
    assert resolve_in_registry("team/web:1", "127.0.0.1:5000") == "127.0.0.1:5000/team/web:1"
    assert resolve_in_registry("127.0.0.1:5000/web", "127.0.0.1:5000") == "127.0.0.1:5000/web"


def test_credentials_are_never_sent_to_another_registry():
    with pytest.raises(InvalidInputError) as caught:
        resolve_in_registry("10.0.0.1:5000/web", "127.0.0.1:5000")
    assert caught.value.status == 422 and "registry" in caught.value.extra["errors"]


@pytest.mark.parametrize("reference, expected", [
    ("busybox", ("busybox", "latest")),
    ("127.0.0.1:5000/team/web:1", ("127.0.0.1:5000/team/web", "1")),
    ("127.0.0.1:5000/team/web", ("127.0.0.1:5000/team/web", "latest")),
    ("web@sha256:" + "a" * 64, ("web", "sha256:" + "a" * 64)),
])
def test_split_reference_defaults_the_tag_to_latest(reference, expected):
    assert split_reference(reference) == expected


def test_tag_spec_defaults_to_latest_and_refuses_bad_names_and_unknown_fields():
    assert TagSpecSchema().load({"repository": "127.0.0.1:5000/team/web"}) == {
        "repository": "127.0.0.1:5000/team/web", "tag": "latest"}
    for bad in ({"repository": "Team/Web"}, {"repository": "web", "tag": "-x"},
                {"repository": "web", "tag": "a b"}, {"repository": "web", "force": True}):
        with pytest.raises(ValidationError):
            TagSpecSchema().load(bad)


def test_pull_spec_refuses_an_invalid_reference():
    with pytest.raises(ValidationError) as caught:
        PullSpecSchema().load({"image": "UPPER/case"})
    assert "image" in caught.value.messages


def test_prune_filters_map_label_not_to_dockers_label_bang_and_refuse_unknown_ones():
    loaded = ImagePruneSchema().load({"filters": {"label": ["a=b"], "label_not": ["c"]}})
    assert loaded["all"] is False
    assert prune_filters(loaded["filters"]) == {"label": ["a=b"], "label!": ["c"]}
    with pytest.raises(ValidationError):
        ImagePruneSchema().load({"filters": {"dangling": ["false"]}})


@pytest.mark.parametrize("schema", [ImagePruneSchema, VolumePruneSchema])
def test_prune_filters_still_accept_label_bang_but_not_beside_label_not(schema):
    loaded = schema().load({"filters": {"label!": ["c"]}})
    assert loaded["filters"] == {"label_not": ["c"]}
    with pytest.raises(ValidationError) as caught:
        schema().load({"filters": {"label!": ["c"], "label_not": ["d"]}})
    assert "label_not" in caught.value.messages["filters"]


@pytest.mark.parametrize("schema", ["ImagePruneFilters", "VolumePruneFilters"])
def test_documented_prune_filters_have_names_a_generator_can_map(schema):
    from apispec import APISpec
    from apispec.ext.marshmallow import MarshmallowPlugin

    from schemas.images import ImagePruneFiltersSchema
    from schemas.volumes import VolumePruneFiltersSchema

    spec = APISpec("t", "1", "3.0.3", plugins=[MarshmallowPlugin()])
    spec.components.schema("ImagePruneFilters", schema=ImagePruneFiltersSchema)
    spec.components.schema("VolumePruneFilters", schema=VolumePruneFiltersSchema)
    properties = spec.to_dict()["components"]["schemas"][schema]["properties"]
    assert "label_not" in properties
    assert all(name.isidentifier() for name in properties), sorted(properties)


def test_volume_create_refuses_driver_options_and_one_character_names():
    assert VolumeCreateSchema().load({}) == {"name": None, "driver": "local", "labels": {}}
    for bad in ({"name": "x"}, {"name": "-x"}, {"driver_opts": {"o": "bind"}},
                {"name": "ok", "driver": "Bad Driver"}):
        with pytest.raises(ValidationError):
            VolumeCreateSchema().load(bad)
