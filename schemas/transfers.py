"""Schemas for tar transfers (cp, save, load, import) and follow streams."""

from marshmallow import Schema, fields, validate

from schemas.common import FullMatch, job_of

REPOSITORY = r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
TAG = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"


class ArchivePathSchema(Schema):
    path = fields.String(required=True, validate=[validate.Length(min=1, max=4096),
                                                  FullMatch(r"^/.*$", error="an absolute path")])


class SaveArgsSchema(Schema):
    ref = fields.List(fields.String(validate=validate.Length(min=1, max=512)), required=True,
                      validate=validate.Length(min=1, max=50),
                      metadata={"description": "image references; repeat for several"})


class ImportArgsSchema(Schema):
    """Query of ``import``; the route refuses unknown parameters (``fromSrc``, ``url``), so
    the engine is never asked to fetch anything."""

    wait = fields.Float(load_default=0, metadata={"description": "seconds to wait for the job"})
    repository = fields.String(load_default=None, validate=FullMatch(
        REPOSITORY, error="not a valid repository name"))
    tag = fields.String(load_default=None, validate=FullMatch(TAG, error="not a valid tag"))
    change = fields.List(fields.String(validate=FullMatch(
        r"^(CMD|ENTRYPOINT|ENV|EXPOSE|LABEL|ONBUILD|STOPSIGNAL|USER|VOLUME|WORKDIR) .+$",
        error="a Dockerfile instruction: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, "
              "STOPSIGNAL, USER, VOLUME or WORKDIR")), load_default=list)


class EventStreamArgsSchema(Schema):
    since = fields.String(load_default=None)
    until = fields.String(load_default=None)
    type = fields.List(fields.String(validate=validate.OneOf(
        ["container", "image", "volume", "network", "daemon", "plugin", "node", "service",
         "secret", "config"])), load_default=list)
    event = fields.List(fields.String(validate=validate.Length(min=1, max=64)), load_default=list)
    container = fields.List(fields.String(validate=validate.Length(min=1, max=256)),
                            load_default=list)


class ArchiveInResultSchema(Schema):
    container = fields.String()
    path = fields.String()
    bytes = fields.Integer(metadata={"description": "size of the uploaded tar"})


class LoadResultSchema(Schema):
    loaded = fields.List(fields.String(), metadata={"description": "references and image ids"})


class ImportResultSchema(Schema):
    id = fields.String()
    repository = fields.String(allow_none=True)
    tag = fields.String(allow_none=True)


ArchiveInJobSchema = job_of(ArchiveInResultSchema, "ArchiveInJobSchema")
LoadJobSchema = job_of(LoadResultSchema, "LoadJobSchema")
ImportJobSchema = job_of(ImportResultSchema, "ImportJobSchema")
