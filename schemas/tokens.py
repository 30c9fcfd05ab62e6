"""Schemas for /tokens."""

from marshmallow import Schema, fields, validate

from app.core.names import NAME_PATTERN, ROLES
from schemas.common import FullMatch


class RateLimitSchema(Schema):
    reads = fields.Integer(validate=validate.Range(min=0, max=1_000_000),
                           metadata={"description": "GET requests per second (0: unlimited)"})
    ops = fields.Integer(validate=validate.Range(min=0, max=1_000_000),
                         metadata={"description": "changing requests per second (0: unlimited)"})


class TokenCreateSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    hosts = fields.List(fields.String(validate=FullMatch(NAME_PATTERN)), load_default=None,
                        allow_none=True, metadata={"description": "host scope; null = all"})
    expires_at = fields.AwareDateTime(load_default=None, allow_none=True)
    rate_limit = fields.Nested(RateLimitSchema, load_default=None, allow_none=True, metadata={
        "description": "per-token limits overriding DOCKYARD_RATE_LIMIT_READS/_OPS"})


class TokenSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    role = fields.String(required=True)
    hosts = fields.List(fields.String(), allow_none=True)
    expires_at = fields.String(allow_none=True)
    created_at = fields.String()
    rate_limit = fields.Nested(RateLimitSchema, allow_none=True)


class TokenCreatedSchema(TokenSchema):
    token = fields.String(required=True, metadata={"description": "the secret; shown once"})
