"""Schemas for /hosts."""

from marshmallow import Schema, fields, validate

from app.core.names import NAME_PATTERN, ROUTES
from schemas.common import FullMatch


class TlsSchema(Schema):
    ca_cert = fields.String(required=True, load_only=True)
    client_cert = fields.String(required=True, load_only=True)
    client_key = fields.String(required=True, load_only=True)


class SshSchema(Schema):
    """How workers reach an ssh:// host: the key is sealed at rest and never returned."""

    private_key = fields.String(required=True, load_only=True,
                                validate=validate.Length(min=1, max=16 * 1024), metadata={
                                    "description": "OpenSSH or PEM private key (Ed25519, ECDSA, RSA)"})
    known_hosts = fields.String(load_default=None, allow_none=True, load_only=True,
                                validate=validate.Length(max=64 * 1024), metadata={
        "description": "known_hosts line(s) for the server, e.g. from a verified ssh-keyscan; "
                       "without them only the worker's own known_hosts is trusted, and an "
                       "unknown host key is refused (502)"})
    passphrase = fields.String(load_default=None, allow_none=True, load_only=True,
                               validate=validate.Length(max=1024))


class HostCreateSchema(Schema):
    name = fields.String(required=True, validate=FullMatch(
        NAME_PATTERN, error="lowercase letters, digits, '.', '_' or '-', at most 63"))
    url = fields.String(required=True, validate=validate.Length(min=1, max=2048))
    tls = fields.Nested(TlsSchema, load_default=None, allow_none=True)
    ssh = fields.Nested(SshSchema, load_default=None, allow_none=True)
    route = fields.String(load_default="central", validate=validate.OneOf(ROUTES))
    labels = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=128)),
                         values=fields.String(validate=validate.Length(max=256)),
                         load_default=dict)


class HostUpdateSchema(Schema):
    url = fields.String(validate=validate.Length(min=1, max=2048))
    tls = fields.Nested(TlsSchema, allow_none=True)
    ssh = fields.Nested(SshSchema, allow_none=True)
    route = fields.String(validate=validate.OneOf(ROUTES))
    labels = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=128)),
                         values=fields.String(validate=validate.Length(max=256)))


class AgentCredentialsSchema(Schema):
    """An agent's login, shown once (POST /hosts with route agent, or a re-key)."""

    redis_url = fields.String(metadata={"description": "Redis URL with the agent's own ACL login"})
    agent_key = fields.String(metadata={"description": "the agent's own sealing key "
                                                       "(DOCKYARD_AGENT_KEY)"})
    task_verify_key = fields.String(metadata={"description": "public key verifying task messages"})
    user = fields.String(metadata={"description": "the agent's Redis ACL user"})


class HostSchema(Schema):
    """A host record; TLS and SSH material are never returned, only whether they are set."""

    name = fields.String(required=True)
    url = fields.String(required=True)
    route = fields.String()
    labels = fields.Dict(keys=fields.String(), values=fields.String())
    tls = fields.Boolean(metadata={"description": "mutual TLS material is stored"})
    ssh = fields.Boolean(metadata={"description": "an SSH key is stored"})
    created_at = fields.String(allow_none=True)
    updated_at = fields.String(allow_none=True)
    last_seen = fields.String(allow_none=True)
    engine_version = fields.String(allow_none=True)
    lanes_alive = fields.Dict(keys=fields.String(), values=fields.Boolean())
    agent_credentials = fields.Nested(AgentCredentialsSchema, metadata={
        "description": "only when an agent host is registered (or moved to route agent): "
                       "its agent's login, shown once"})


class ContainerCountsSchema(Schema):
    total = fields.Integer()
    running = fields.Integer()
    paused = fields.Integer()
    stopped = fields.Integer()


class HostLiveSchema(Schema):
    reachable = fields.Boolean()
    engine_version = fields.String(allow_none=True)
    api_version = fields.String(allow_none=True)
    os = fields.String(allow_none=True)
    architecture = fields.String(allow_none=True)
    containers = fields.Nested(ContainerCountsSchema)
    images = fields.Integer()
    error = fields.Dict(allow_none=True)


class HostDetailSchema(HostSchema):
    live = fields.Nested(HostLiveSchema)


class DfTotalsSchema(Schema):
    total = fields.Integer()
    active = fields.Integer()
    size = fields.Integer()
    reclaimable = fields.Integer()


class DiskUsageSchema(Schema):
    images = fields.Nested(DfTotalsSchema)
    containers = fields.Nested(DfTotalsSchema)
    volumes = fields.Nested(DfTotalsSchema)
    build_cache = fields.Nested(DfTotalsSchema)




EVENT_TYPES = ("container", "image", "volume", "network", "daemon", "plugin", "node", "service",
               "secret", "config")


class EventsArgsSchema(Schema):
    """``docker events --since --until --filter …`` over a bounded window."""

    since = fields.String(load_default=None, metadata={
        "description": "unix seconds, RFC 3339 or a duration ago (10m); default until - 1h"})
    until = fields.String(load_default=None, metadata={"description": "as since; default now"})
    type = fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)), load_default=list)
    container = fields.List(fields.String(validate=validate.Length(min=1, max=256)), load_default=list)
    image = fields.List(fields.String(validate=validate.Length(min=1, max=512)), load_default=list)
    event = fields.List(fields.String(validate=validate.Length(min=1, max=64)), load_default=list)
    label = fields.List(fields.String(validate=validate.Length(min=1, max=512)), load_default=list)
    limit = fields.Integer(load_default=10_000, validate=validate.Range(min=1, max=10_000))


class EventActorSchema(Schema):
    id = fields.String(allow_none=True)
    attributes = fields.Dict(keys=fields.String(), values=fields.String())


class EventSchema(Schema):
    type = fields.String(allow_none=True)
    action = fields.String(allow_none=True)
    actor = fields.Nested(EventActorSchema)
    scope = fields.String(allow_none=True)
    time = fields.Integer(allow_none=True)
    time_nano = fields.Integer(allow_none=True)
