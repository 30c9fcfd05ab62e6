"""Schemas for /registries."""

from marshmallow import Schema, fields, validate

from app.core.names import NAME_PATTERN
from schemas.common import FullMatch

MAX_CA_CERT = 64 * 1024
MAX_PAGE = 1000


class RegistryCreateSchema(Schema):
    name = fields.String(required=True, validate=FullMatch(NAME_PATTERN))
    url = fields.String(required=True, validate=validate.Length(min=1, max=2048))
    username = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=256))
    password = fields.String(load_default=None, allow_none=True, load_only=True,
                             validate=validate.Length(max=4096))
    insecure = fields.Boolean(load_default=False)
    ca_cert = fields.String(load_default=None, allow_none=True,
                            validate=validate.Length(max=MAX_CA_CERT),
                            metadata={"description": "PEM CA that signed a TLS registry's "
                                                     "certificate"})


class RegistryPatchSchema(Schema):
    """Only the fields given change; null clears username (and the password), password,
    ca_cert."""

    url = fields.String(validate=validate.Length(min=1, max=2048))
    username = fields.String(allow_none=True, validate=validate.Length(max=256))
    password = fields.String(allow_none=True, load_only=True, validate=validate.Length(max=4096))
    insecure = fields.Boolean()
    ca_cert = fields.String(allow_none=True, validate=validate.Length(max=MAX_CA_CERT))


class RegistrySchema(Schema):
    """A registry; the password is never returned, only whether one is stored."""

    name = fields.String(required=True)
    url = fields.String(required=True)
    address = fields.String(metadata={"description": "host[:port] prefix of image references"})
    username = fields.String(allow_none=True)
    has_password = fields.Boolean()
    insecure = fields.Boolean()
    ca_cert = fields.String(allow_none=True)
    created_at = fields.String(allow_none=True)
    updated_at = fields.String(allow_none=True)


class RegistryCheckSchema(Schema):
    """A successful login check."""

    ok = fields.Boolean(required=True)
    status = fields.Integer(required=True, metadata={"description": "status of GET /v2/"})
    auth = fields.String(required=True, validate=validate.OneOf(["none", "basic", "bearer"]))


class PageArgsSchema(Schema):
    n = fields.Integer(load_default=None, validate=validate.Range(min=1, max=MAX_PAGE))
    last = fields.String(load_default=None, validate=validate.Length(min=1, max=512))


class PageSchema(Schema):
    """The registry's next page (from its Link header), as `n` and `last` to pass back."""

    last = fields.String(required=True)
    n = fields.Integer(allow_none=True)


class RepositoryPageSchema(Schema):
    repositories = fields.List(fields.String(), required=True)
    next = fields.Nested(PageSchema, allow_none=True)
    next_url = fields.String(allow_none=True, metadata={"description": "this API's next page"})


class TagPageSchema(Schema):
    name = fields.String(required=True)
    tags = fields.List(fields.String(), required=True)
    next = fields.Nested(PageSchema, allow_none=True)
    next_url = fields.String(allow_none=True)


class ManifestDeletedSchema(Schema):
    repository = fields.String(required=True)
    reference = fields.String(required=True)
    digest = fields.String(required=True, metadata={"description": "the digest deleted"})
