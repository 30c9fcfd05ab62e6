"""Schemas for /tokens."""

from marshmallow import Schema, fields, validate

from app.auth import ROLES
from app.hosts import NAME_PATTERN
from schemas.common import FullMatch


class TokenCreateSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    hosts = fields.List(fields.String(validate=FullMatch(NAME_PATTERN)), load_default=None,
                        allow_none=True, metadata={"description": "host scope; null = all"})
    expires_at = fields.AwareDateTime(load_default=None, allow_none=True)


class TokenSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    role = fields.String(required=True)
    hosts = fields.List(fields.String(), allow_none=True)
    expires_at = fields.String(allow_none=True)
    created_at = fields.String()


class TokenCreatedSchema(TokenSchema):
    token = fields.String(required=True, metadata={"description": "the secret; shown once"})
