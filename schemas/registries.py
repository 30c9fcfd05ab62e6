"""Schemas for /registries."""

from marshmallow import Schema, fields, validate

from app.hosts import NAME_PATTERN
from schemas.common import FullMatch


class RegistryCreateSchema(Schema):
    name = fields.String(required=True, validate=FullMatch(NAME_PATTERN))
    url = fields.String(required=True, validate=validate.Length(min=1, max=2048))
    username = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=256))
    password = fields.String(load_default=None, allow_none=True, load_only=True,
                             validate=validate.Length(max=4096))
    insecure = fields.Boolean(load_default=False)


class RegistrySchema(Schema):
    """A registry; the password is never returned, only whether one is stored."""

    name = fields.String(required=True)
    url = fields.String(required=True)
    address = fields.String(metadata={"description": "host[:port] prefix of image references"})
    username = fields.String(allow_none=True)
    has_password = fields.Boolean()
    insecure = fields.Boolean()
    created_at = fields.String(allow_none=True)
