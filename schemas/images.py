"""Schemas for /hosts/{host}/images, and docker's image reference grammar."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from app.core.names import NAME_PATTERN
from schemas.common import (
    LABEL_NOT_DESCRIPTION,
    FullMatch,
    ProblemSchema,
    PruneFiltersSchema,
    job_of,
)

# The grammar of github.com/distribution/reference, which the engine enforces.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?")
TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_NAME_MAX = 255


def is_repository(name: str) -> bool:
    """True for ``[registry/]path`` as docker accepts it: lowercase path, at most 255 chars.

    The first component is a registry only if it looks like a host (a dot, a port or
    ``localhost``); otherwise it is part of the lowercase path.
    """
    if not name or len(name) > _NAME_MAX:
        return False
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN.fullmatch(first):
            return False
        name = rest
    return _PATH.fullmatch(name) is not None


def is_reference(reference: str) -> bool:
    """True for ``name[:tag][@digest]`` as ``docker pull`` accepts it."""
    name, at, digest = reference.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        return False
    head, _, last = name.rpartition("/")
    if ":" in last:
        last, tag = last.split(":", 1)
        if not TAG.fullmatch(tag):
            return False
        name = f"{head}/{last}" if head else last
    return is_repository(name)


def _check(predicate: Any, message: str):
    def validator(value: str) -> None:
        if not predicate(value):
            raise ValidationError(message)
    return validator


REPOSITORY_ERROR = ("not a repository name: [registry[:port]/]path, lowercase letters, digits "
                    "and . _ - separators, at most 255 characters")
REFERENCE_ERROR = "not an image reference: name[:tag][@digest]"
TAG_ERROR = "a tag is [A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128 characters"


class ImageListArgsSchema(Schema):
    all = fields.Boolean(load_default=False, metadata={"description": "`-a`: intermediate images too"})
    quiet = fields.Boolean(load_default=False,
                           metadata={"description": "`-q`: answer a list of full image ids"})
    dangling = fields.Boolean(load_default=None, metadata={"description": "`-f dangling=…`"})
    reference = fields.String(validate=validate.Length(min=1, max=512),
                              metadata={"description": "`REPOSITORY[:TAG]`, wildcards allowed"})
    label = fields.List(fields.String(validate=validate.Length(min=1, max=512)), load_default=list)


class ImageSummarySchema(Schema):
    """One image as ``docker images`` lists it, with all its tags."""

    id = fields.String(required=True)
    repo_tags = fields.List(fields.String())
    repo_digests = fields.List(fields.String())
    parent_id = fields.String(allow_none=True)
    created = fields.Integer(metadata={"description": "unix time"})
    size = fields.Integer()
    labels = fields.Dict(keys=fields.String(), values=fields.String())


class HistoryEntrySchema(Schema):
    """A layer of ``docker history``; ``id`` is null for layers built elsewhere (<missing>)."""

    id = fields.String(allow_none=True)
    created = fields.Integer()
    created_by = fields.String()
    tags = fields.List(fields.String())
    size = fields.Integer()
    comment = fields.String()


class TagSpecSchema(Schema):
    """``docker tag REF REPOSITORY[:TAG]``."""

    repository = fields.String(required=True, validate=_check(is_repository, REPOSITORY_ERROR))
    tag = fields.String(load_default="latest", validate=FullMatch(TAG, error=TAG_ERROR))


class RemoveImageArgsSchema(Schema):
    force = fields.Boolean(load_default=False)


class BulkRemoveArgsSchema(Schema):
    ref = fields.List(fields.String(validate=validate.Length(min=1, max=512)), required=True,
                      validate=validate.Length(min=1, max=100),
                      metadata={"description": "repeat for each image: `?ref=a&ref=b`"})
    force = fields.Boolean(load_default=False)


class ImagePruneFiltersSchema(PruneFiltersSchema):
    label = fields.List(fields.String(validate=validate.Length(min=1, max=512)))
    label_not = fields.List(fields.String(validate=validate.Length(min=1, max=512)),
                            metadata={"description": LABEL_NOT_DESCRIPTION})
    until = fields.String(validate=validate.Length(min=1, max=64))


class ImagePruneSchema(Schema):
    """``docker image prune [-a] [--filter …]``."""

    all = fields.Boolean(load_default=False,
                         metadata={"description": "every unused image, not only dangling ones"})
    filters = fields.Nested(ImagePruneFiltersSchema, load_default=dict)


class PullSpecSchema(Schema):
    """``docker pull NAME[:TAG|@DIGEST]``."""

    image = fields.String(required=True, validate=_check(is_reference, REFERENCE_ERROR))
    registry = fields.String(load_default=None, allow_none=True, validate=FullMatch(NAME_PATTERN),
                             metadata={"description": "stored registry whose credentials to "
                                                      "use; a reference naming no registry is "
                                                      "pulled from it"})


class PushSpecSchema(Schema):
    """``docker push``, after ``docker tag`` when the target differs from the ref."""

    registry = fields.String(load_default=None, allow_none=True, validate=FullMatch(NAME_PATTERN),
                             metadata={"description": "stored registry to push to"})
    tag = fields.String(load_default=None, allow_none=True,
                        validate=FullMatch(TAG, error=TAG_ERROR))


class SearchArgsSchema(Schema):
    term = fields.String(required=True, validate=validate.Length(min=1, max=256))
    limit = fields.Integer(load_default=25, validate=validate.Range(min=1, max=100))


class SearchResultSchema(Schema):
    name = fields.String()
    description = fields.String()
    stars = fields.Integer()
    official = fields.Boolean()
    automated = fields.Boolean()


def prune_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """Loaded prune filters as the engine names them."""
    names = {"label": "label", "label_not": "label!", "until": "until"}
    return {names[key]: value for key, value in filters.items() if value}


class CommitPushSchema(Schema):
    registry = fields.String(required=True, validate=validate.Length(min=1, max=63),
                             metadata={"description": "a stored registry's name"})


class CommitSpecSchema(Schema):
    """``docker commit [-m] [-a] [-c] [-p] CONTAINER REPOSITORY[:TAG]`` [+ ``push``]."""

    repository = fields.String(required=True, validate=_check(is_repository, REPOSITORY_ERROR))
    tag = fields.String(load_default="latest", validate=FullMatch(TAG, error=TAG_ERROR))
    message = fields.String(load_default=None, allow_none=True,
                            validate=validate.Length(max=4096))
    author = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=256))
    changes = fields.List(fields.String(validate=FullMatch(
        r"^(CMD|ENTRYPOINT|ENV|EXPOSE|LABEL|ONBUILD|STOPSIGNAL|USER|VOLUME|WORKDIR) .+$",
        error="a Dockerfile instruction: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, "
              "STOPSIGNAL, USER, VOLUME or WORKDIR")), load_default=list)
    pause = fields.Boolean(load_default=True,
                           metadata={"description": "pause the container while committing"})
    push = fields.Nested(CommitPushSchema, load_default=None, allow_none=True)


class PullResultSchema(Schema):
    ref = fields.String()
    id = fields.String()
    repo_digests = fields.List(fields.String())


class PushResultSchema(Schema):
    ref = fields.String()
    id = fields.String()
    digest = fields.String(allow_none=True)


class TagResultSchema(Schema):
    id = fields.String()
    ref = fields.String()


class ImageRemovedResultSchema(Schema):
    ref = fields.String()
    untagged = fields.List(fields.String())
    deleted = fields.List(fields.String())


class ImageRemovalOutcomeSchema(ImageRemovedResultSchema):
    error = fields.Nested(ProblemSchema, allow_none=True, metadata={
        "description": "why this reference was not removed (null: it was)"})


class RemoveManyResultSchema(Schema):
    results = fields.List(fields.Nested(ImageRemovalOutcomeSchema))
    removed = fields.Integer()
    failed = fields.Integer()


class ImagePruneResultSchema(Schema):
    deleted = fields.List(fields.String())
    untagged = fields.List(fields.String())
    space_reclaimed = fields.Integer(metadata={"description": "bytes"})


PullJobSchema = job_of(PullResultSchema, "PullJobSchema")
PushJobSchema = job_of(PushResultSchema, "PushJobSchema")
TagJobSchema = job_of(TagResultSchema, "TagJobSchema")
ImageRemovedJobSchema = job_of(ImageRemovedResultSchema, "ImageRemovedJobSchema")
RemoveManyJobSchema = job_of(RemoveManyResultSchema, "RemoveManyJobSchema")
ImagePruneJobSchema = job_of(ImagePruneResultSchema, "ImagePruneJobSchema")
