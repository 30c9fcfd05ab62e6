"""Schemas for /audit and /policy/check."""

from marshmallow import Schema, fields, validate

from schemas.common import FullMatch


class AuditArgsSchema(Schema):
    actor = fields.String(validate=validate.Length(max=100))
    host = fields.String(validate=validate.Length(max=63))
    outcome = fields.String(validate=validate.OneOf(["ok", "denied", "error"]))
    since = fields.AwareDateTime(metadata={"description": "RFC 3339, inclusive"})
    until = fields.AwareDateTime(metadata={"description": "RFC 3339, inclusive"})
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(validate=FullMatch(r"\d{1,19}-\d{1,19}",
                                              error="the next_cursor of an earlier page"))


class AuditEntrySchema(Schema):
    id = fields.String()
    ts = fields.String()
    request_id = fields.String(allow_none=True)
    actor = fields.String(allow_none=True)
    token_id = fields.String(allow_none=True)
    method = fields.String()
    route = fields.String()
    path = fields.String()
    host = fields.String(allow_none=True)
    target = fields.String(allow_none=True)
    request = fields.Dict(metadata={"description": "query and body, secrets replaced by ***"})
    decision = fields.String()
    rule = fields.String(allow_none=True)
    outcome = fields.String()
    status = fields.Integer()
    job_id = fields.String(allow_none=True)
    chat = fields.Dict(allow_none=True, metadata={
        "description": "a chat command: the platform and the user who sent it "
                       "(actor is the principal that user is mapped to)"})
    session = fields.Dict(allow_none=True, metadata={
        "description": "an interactive session (method SESSION, status its close code): id, "
                       "container, started_at, ended_at, exit_code, close_code, close_reason, "
                       "bytes_in, bytes_out; never what was typed or shown"})


class AuditPageSchema(Schema):
    items = fields.List(fields.Nested(AuditEntrySchema))
    next_cursor = fields.String(allow_none=True)


class ViolationSchema(Schema):
    rule = fields.String()
    detail = fields.String()


class PolicyCheckSchema(Schema):
    allowed = fields.Boolean()
    violations = fields.List(fields.Nested(ViolationSchema))
