"""Schemas for /builds: the build spec and where its context comes from."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)

from app.core.names import NAME_PATTERN
from schemas.common import FullMatch, job_of
from schemas.images import is_reference

MAX_TAGS = 20
MAX_BUILD_ARGS = 100
MAX_INLINE_DOCKERFILE = 256 * 1024
TAG_REFERENCE_ERROR = ("not an image name: [registry[:port]/]repository[:tag], lowercase "
                       "repository, tag [A-Za-z0-9_][A-Za-z0-9_.-]*")
GIT_URL_ERROR = ("a git context is git://host/path, or http(s)://host/path.git, optionally "
                 "followed by #ref, #ref:subdir or #:subdir")

_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STAGE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,127}")
# The engine runs `git fetch` itself, and treats an http(s) URL as a repository only when its
# path ends in .git; any other http(s) URL it would download as a tarball or Dockerfile.
_GIT_URL = re.compile(r"(?:git://[^\s#]+|https?://[^\s#]+\.git)(?:#[^\s#:]*(?::[^\s#]*)?)?")


def is_tag_reference(value: str) -> bool:
    """True for ``name[:tag]`` as ``docker build -t`` takes it (no digest)."""
    return "@" not in value and is_reference(value)


def is_context_path(value: str) -> bool:
    """A relative path inside the context: no absolute path, no ``..``, no control characters."""
    if not value or value.startswith("/") or not value.isprintable():
        return False
    return ".." not in value.replace("\\", "/").split("/")


class BuildArgField(fields.Field):
    """``"value"`` or ``{"value": "...", "secret": true}``; loads as ``{value, secret}``."""

    default_error_messages = {
        "invalid": "a build arg is a string or an object with a string 'value' and a "
                   "boolean 'secret'",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict:
        if isinstance(value, str):
            return {"value": value, "secret": False}
        if isinstance(value, dict) and set(value) <= {"value", "secret"} \
                and isinstance(value.get("value"), str) \
                and isinstance(value.get("secret", False), bool):
            return {"value": value["value"], "secret": value.get("secret", False)}
        raise self.make_error("invalid")


class PushTargetSchema(Schema):
    """Where the built tags are pushed after the build."""

    class Meta:
        unknown = RAISE

    registry = fields.String(required=True, validate=FullMatch(NAME_PATTERN),
                             metadata={"description": "stored registry; tags naming no "
                                                      "registry are placed in it"})


class BuildSpecSchema(Schema):
    """``docker build`` (+ ``docker tag``, ``docker push``) of one context on one host.

    As JSON, exactly one of ``git`` or ``dockerfile`` gives the context; as multipart, the
    ``context`` part does and this object is the ``spec`` part.
    """

    class Meta:
        unknown = RAISE

    host = fields.String(required=True, validate=FullMatch(NAME_PATTERN),
                         metadata={"description": "the host whose engine builds"})
    tags = fields.List(fields.String(validate=validate.Length(max=512)), load_default=list,
                       validate=validate.Length(max=MAX_TAGS),
                       metadata={"description": "`-t` for each; the first is given by the "
                                                "build, the others by `docker tag`"})
    dockerfile_path = fields.String(load_default="Dockerfile",
                                    validate=validate.Length(min=1, max=1024),
                                    metadata={"description": "`-f`, relative to the context"})
    build_args = fields.Dict(keys=fields.String(), values=BuildArgField(), load_default=dict,
                             metadata={"description": "`--build-arg`; a value "
                                                      "`{\"value\": …, \"secret\": true}` is "
                                                      "redacted from events and results"})
    target = fields.String(load_default=None, allow_none=True,
                           validate=FullMatch(_STAGE, error="not a build stage name"))
    labels = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=1024)),
                         values=fields.String(validate=validate.Length(max=4096)),
                         load_default=dict)
    no_cache = fields.Boolean(load_default=False)
    pull = fields.Boolean(load_default=False,
                          metadata={"description": "always pull the base images"})
    push = fields.Nested(PushTargetSchema, load_default=None, allow_none=True)
    git = fields.String(validate=[validate.Length(max=2048), FullMatch(_GIT_URL,
                                                                       error=GIT_URL_ERROR)],
                        metadata={"description": "`url#ref:subdir`: the engine fetches it"})
    dockerfile = fields.String(validate=validate.Length(min=1, max=MAX_INLINE_DOCKERFILE),
                               metadata={"description": "an inline Dockerfile and no other "
                                                        "context"})

    @validates("tags")
    def _tags(self, tags: list[str], **_: Any) -> None:
        bad = [tag for tag in tags if not is_tag_reference(tag)]
        if bad:
            raise ValidationError(f"{TAG_REFERENCE_ERROR}: {', '.join(bad[:5])}")
        if len(set(tags)) != len(tags):
            raise ValidationError("tags must be distinct")

    @validates("dockerfile_path")
    def _dockerfile_path(self, path: str, **_: Any) -> None:
        if not is_context_path(path):
            raise ValidationError("a relative path inside the context, without '..'")

    @validates("build_args")
    def _build_args(self, args: dict[str, dict], **_: Any) -> None:
        if len(args) > MAX_BUILD_ARGS:
            raise ValidationError(f"at most {MAX_BUILD_ARGS} build args")
        bad = [name for name in args if not _ARG_NAME.fullmatch(name)]
        if bad:
            raise ValidationError(f"not a build arg name: {', '.join(bad[:5])}")

    @validates_schema
    def _push_needs_tags(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("push") and not data.get("tags"):
            raise ValidationError("a pushed build needs at least one tag", "tags")


def context_errors(spec: dict[str, Any], uploaded: bool) -> dict[str, list[str]]:
    """Field errors when a build has no context, or more than one."""
    given = [name for name in ("git", "dockerfile") if spec.get(name) is not None]
    if uploaded and given:
        return {name: ["not allowed with an uploaded context"] for name in given}
    if not uploaded and len(given) != 1:
        message = "give exactly one of git, dockerfile (or upload a context as multipart)"
        return {"git": [message], "dockerfile": [message]}
    return {}


class PushedImageSchema(Schema):
    ref = fields.String()
    digest = fields.String(allow_none=True)


class BuildResultSchema(Schema):
    image_id = fields.String()
    tags = fields.List(fields.String())
    pushed = fields.List(fields.Nested(PushedImageSchema))


BuildJobSchema = job_of(BuildResultSchema, "BuildJobSchema")
