"""Schemas for backups: the backup options, the catalog, restore requests and schedules."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from schemas.common import FullMatch, job_of
from schemas.containers import (
    CONTAINER_NAME,
    PortSchema,
    ProvisionResultSchema,
    _ShortOr,
    parse_port,
)

COMPRESSIONS = ("none", "gzip", "zstd")
CONSISTENCIES = ("none", "pause", "stop")
# An image repository without a tag: [registry[:port]/]path, lower case as docker wants it.
REPOSITORY = r"^(?:[a-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$"


class BackupSpecSchema(Schema):
    """Options of `POST /hosts/{host}/containers/{ref}/backups`."""

    compression = fields.String(load_default="none", validate=validate.OneOf(COMPRESSIONS))
    consistency = fields.String(load_default="none", validate=validate.OneOf(CONSISTENCIES),
                                metadata={"description": "none; pause the container for the "
                                                         "duration; or stop it and start it again"})
    include_volumes = fields.Boolean(load_default=True)
    include_binds = fields.Boolean(load_default=False, metadata={
        "description": "also archive bind mounts (they are under the allowed roots by policy)"})
    note = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=1000))


class BackupListArgsSchema(Schema):
    host = fields.String(validate=validate.Length(min=1, max=128))
    container = fields.String(validate=validate.Length(min=1, max=128),
                              metadata={"description": "container name or full id"})


class BackupPartSchema(Schema):
    path = fields.String()
    kind = fields.String(metadata={"description": "config, rootfs, volume or bind"})
    compression = fields.String()
    sha256 = fields.String()
    size = fields.Integer()
    uncompressed_size = fields.Integer()
    target = fields.String(metadata={"description": "mount path in the container"})
    volume = fields.String()
    anonymous = fields.Boolean()
    source = fields.String(metadata={"description": "host path of a bind mount"})


class BackupContainerSchema(Schema):
    id = fields.String()
    name = fields.String()


class BackupSchema(Schema):
    """A bundle's manifest."""

    id = fields.String()
    format = fields.Integer()
    dockyard_version = fields.String()
    host = fields.String()
    container = fields.Nested(BackupContainerSchema)
    scope = fields.String(allow_none=True, metadata={
        "description": "the scope label of the container it was made from"})
    image = fields.String(allow_none=True)
    image_id = fields.String(allow_none=True)
    created_at = fields.String()
    compression = fields.String()
    consistency = fields.String()
    include_volumes = fields.Boolean()
    include_binds = fields.Boolean()
    note = fields.String(allow_none=True)
    schedule_id = fields.String(allow_none=True)
    size = fields.Integer(metadata={"description": "bytes of all parts as stored"})
    content_sha256 = fields.String(allow_none=True, metadata={
        "description": "hex sha256 of the download (GET …/content, the whole tar): its ETag "
                       "and Repr-Digest; null for a bundle made before it was recorded"})
    content_size = fields.Integer(allow_none=True, metadata={
        "description": "bytes of the download (the whole tar)"})
    skipped_binds = fields.List(fields.String(), metadata={
        "description": "bind sources not archived: outside the policy's bind roots"})
    parts = fields.List(fields.Nested(BackupPartSchema))
    links = fields.Dict(keys=fields.String(), values=fields.String())


class RestoreOverridesSchema(Schema):
    ports = fields.List(_ShortOr(PortSchema, parse_port), load_default=list, metadata={
        "description": "replace the saved mappings of the same container port and protocol"})


class RestoreSpecSchema(Schema):
    """`POST /backups/{id}/restore`."""

    host = fields.String(load_default=None, allow_none=True,
                         metadata={"description": "target host (default: the source host)"})
    name = fields.String(load_default=None, allow_none=True, validate=FullMatch(
        CONTAINER_NAME, error="names are [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128"),
        metadata={"description": "container name (default: the original name)"})
    start = fields.Boolean(load_default=True)
    replace = fields.Boolean(load_default=False)
    image_repository = fields.String(load_default=None, allow_none=True, validate=[
        validate.Length(max=255), FullMatch(REPOSITORY, error="not an image repository")],
        metadata={"description": "repository the filesystem is imported as "
                                 "(default dockyard-restore/<name>); tag backup-<id>"})
    overrides = fields.Nested(RestoreOverridesSchema, load_default=dict)


class ScheduleSpecSchema(Schema):
    """`POST /backup-schedules`."""

    host = fields.String(required=True, validate=validate.Length(min=1, max=128))
    container = fields.String(required=True, validate=validate.Length(min=1, max=128),
                              metadata={"description": "container name or id on that host"})
    cron = fields.String(required=True, validate=validate.Length(min=1, max=200),
                         metadata={"description": "five fields: minute hour day month weekday (UTC)"})
    keep = fields.Integer(load_default=7, validate=validate.Range(min=1, max=10000))
    compression = fields.String(load_default="zstd", validate=validate.OneOf(COMPRESSIONS))
    consistency = fields.String(load_default="none", validate=validate.OneOf(CONSISTENCIES))
    include_volumes = fields.Boolean(load_default=True)


class ScheduleSchema(ScheduleSpecSchema):
    id = fields.String()
    created_at = fields.String()
    created_by = fields.String()
    last_run_at = fields.String(allow_none=True)
    last_job_id = fields.String(allow_none=True)


class RestoreResultSchema(Schema):
    backup = fields.String()
    image = fields.String(allow_none=True)
    image_id = fields.String(allow_none=True)
    volumes = fields.List(fields.String(), metadata={"description": "the volumes restored"})
    container = fields.Nested(ProvisionResultSchema)


BackupJobSchema = job_of(BackupSchema, "BackupJobSchema")
RestoreJobSchema = job_of(RestoreResultSchema, "RestoreJobSchema")
