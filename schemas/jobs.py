"""Schemas for /jobs."""

from marshmallow import Schema, fields, validate

from schemas.common import JobSchema


class JobListArgsSchema(Schema):
    state = fields.String(validate=validate.OneOf(
        ["queued", "running", "succeeded", "failed", "cancelled"]))
    kind = fields.String(validate=validate.Length(max=100))
    host = fields.String(validate=validate.Length(max=63))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    cursor = fields.String(validate=validate.Length(max=64))


class JobPageSchema(Schema):
    items = fields.List(fields.Nested(JobSchema), required=True)
    next_cursor = fields.String(allow_none=True)


class JobWaitArgsSchema(Schema):
    wait = fields.Float(load_default=0, validate=validate.Range(min=0, max=3600))
