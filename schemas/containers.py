"""Schemas for /hosts/{host}/containers: the provision spec (docker run -d) and container reads.

Kept whole: the provision spec and the container command schemas share their field types
(ports, mounts, argv, labels); together they are the document of the containers API.
"""

from __future__ import annotations

import re
import shlex
import signal as signals
from typing import Any

from marshmallow import (
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates_schema,
)

from schemas.common import FullMatch, job_of
from schemas.images import PushResultSchema

CONTAINER_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}
_PORT_SHORT = re.compile(
    r"^(?:(?:(?P<ip>\[[0-9a-fA-F:]+\]|[0-9.]+):)?(?P<host>\d*):)?(?P<container>\d+)(?:/(?P<proto>[a-z]+))?$")
PROTOCOLS = ("tcp", "udp", "sctp")
SIGNALS = frozenset(s.name for s in signals.Signals) | frozenset(
    s.name.removeprefix("SIG") for s in signals.Signals)


def parse_size(value: Any) -> int:
    """``"256m"`` → bytes, like ``docker run --memory``."""
    if isinstance(value, bool):
        raise ValidationError("not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValidationError("must not be negative")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValidationError(f"'{value}' is not a size such as 512m or 1g")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: Any) -> float:
    """``"30s"``, ``"1m"``, ``5`` (seconds) → seconds."""
    if isinstance(value, bool):
        raise ValidationError("not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValidationError("must not be negative")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValidationError(f"'{value}' is not a duration such as 30s or 1m")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_port(value: Any) -> dict[str, Any]:
    """A port mapping from docker's short form (``"18080:8080/tcp"``, ``"8080"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValidationError("a port is an object or a string like '18080:8080/tcp'")
    match = _PORT_SHORT.match(value.strip())
    if not match:
        raise ValidationError(f"'{value}' is not a port mapping such as '18080:8080/tcp'")
    ip = (match.group("ip") or "").strip("[]")
    return {"container_port": int(match.group("container")),
            "host_port": int(match.group("host")) if match.group("host") else None,
            "protocol": match.group("proto") or "tcp", "host_ip": ip or None}


def parse_volume(value: Any) -> dict[str, Any]:
    """A mount from docker's short form (``"/srv/x:/www:ro"``, ``"data:/data"``, ``"/cache"``)."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("a volume is an object or a string like '/srv/x:/www:ro'")
    parts = value.split(":")
    mode = None
    if len(parts) == 3 or (len(parts) == 2 and parts[1] in ("ro", "rw")):
        mode = parts.pop()
        if mode not in ("ro", "rw"):
            raise ValidationError(f"mode '{mode}' must be ro or rw")
    if len(parts) == 1:
        return {"source": None, "target": parts[0], "read_only": mode == "ro", "type": "volume"}
    if len(parts) != 2:
        raise ValidationError(f"'{value}' is not SOURCE:TARGET[:ro|rw]")
    source, target = parts
    kind = "bind" if source.startswith("/") else "volume"
    return {"source": source, "target": target, "read_only": mode == "ro", "type": kind}


class _ShortOr(fields.Field):
    """A nested object that also accepts docker's short string form."""

    def __init__(self, schema: type[Schema], parse, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.schema_cls = schema
        self.parse = parse

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict:
        if isinstance(value, dict):
            return self.schema_cls().load(value)
        return self.schema_cls().load(self.parse(value))


class _Size(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        return parse_size(value)


class _Duration(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        return parse_duration(value)


class _Argv(fields.Field):
    """A command as a list of strings, or a string split like a shell would."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        if isinstance(value, str):
            try:
                return shlex.split(value)
            except ValueError as exc:
                raise ValidationError(str(exc)) from exc
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ValidationError("must be a list of strings or a string")


class _StringMap(fields.Field):
    """A string→string map, also accepted as a list of ``K=V`` strings (like ``-e``)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict:
        if isinstance(value, list):
            pairs = {}
            for item in value:
                if not isinstance(item, str) or "=" not in item or item.startswith("="):
                    raise ValidationError(f"'{item}' is not KEY=VALUE")
                key, _, val = item.partition("=")
                pairs[key] = val
            value = pairs
        if not isinstance(value, dict):
            raise ValidationError("must be an object of strings or a list of KEY=VALUE")
        out = {}
        for key, val in value.items():
            if not key or len(key) > 256:
                raise ValidationError(f"invalid key '{key}'")
            if isinstance(val, bool) or not isinstance(val, str | int | float):
                raise ValidationError(f"value of '{key}' must be a string")
            out[key] = str(val)
        return out


class PortSchema(Schema):
    container_port = fields.Integer(required=True, validate=validate.Range(1, 65535))
    host_port = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(1, 65535))
    protocol = fields.String(load_default="tcp", validate=validate.OneOf(PROTOCOLS))
    host_ip = fields.IP(load_default=None, allow_none=True)

    @post_load
    def stringify_ip(self, data: dict, **_: Any) -> dict:
        if data.get("host_ip") is not None:
            data["host_ip"] = str(data["host_ip"])
        return data


class VolumeSchema(Schema):
    source = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=4096))
    target = fields.String(required=True, validate=[
        validate.Length(min=1, max=4096),
        FullMatch(r"^/.*$", error="the target must be an absolute path in the container")])
    read_only = fields.Boolean(load_default=False)
    type = fields.String(load_default=None, validate=validate.OneOf(["bind", "volume"]))

    @post_load
    def infer_type(self, data: dict, **_: Any) -> dict:
        if data["type"] is None:
            source = data.get("source")
            data["type"] = "bind" if source and source.startswith("/") else "volume"
        if data["type"] == "bind" and not (data.get("source") or "").startswith("/"):
            raise ValidationError({"source": ["a bind mount needs an absolute host path"]})
        if data["type"] == "volume" and data.get("source") and not re.match(
                r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", data["source"]):
            raise ValidationError({"source": ["not a valid volume name"]})
        return data


class RestartPolicySchema(Schema):
    name = fields.String(load_default="no", validate=validate.OneOf(
        ["no", "always", "unless-stopped", "on-failure"]))
    maximum_retry_count = fields.Integer(load_default=0, validate=validate.Range(min=0, max=1000))


class HealthcheckSchema(Schema):
    test = _Argv(required=True)
    interval = _Duration(load_default=None)
    timeout = _Duration(load_default=None)
    retries = fields.Integer(load_default=None, validate=validate.Range(min=0, max=100))
    start_period = _Duration(load_default=None)


class ProvisionSpecSchema(Schema):
    """The provision spec: what ``docker run -d`` takes, as JSON."""

    image = fields.String(required=True, validate=[
        validate.Length(min=1, max=512),
        FullMatch(r"^\S+$", error="the image must be a non-blank reference without spaces")])
    name = fields.String(load_default=None, allow_none=True, validate=FullMatch(
        CONTAINER_NAME, error="names are [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128"))
    command = _Argv(load_default=None, allow_none=True)
    entrypoint = _Argv(load_default=None, allow_none=True)
    env = _StringMap(load_default=dict)
    labels = _StringMap(load_default=dict)
    ports = fields.List(_ShortOr(PortSchema, parse_port), load_default=list)
    publish_all = fields.Boolean(load_default=False)
    volumes = fields.List(_ShortOr(VolumeSchema, parse_volume), load_default=list)
    volumes_from = fields.List(fields.String(validate=FullMatch(
        r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*(:(ro|rw))?$", error="CONTAINER[:ro|rw]")), load_default=list)
    restart_policy = fields.Nested(RestartPolicySchema, load_default=None, allow_none=True)
    memory = _Size(load_default=None, allow_none=True)
    cpus = fields.Float(load_default=None, allow_none=True, validate=validate.Range(min=0.01, max=1024))
    network = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=256))
    hostname = fields.String(load_default=None, allow_none=True, validate=FullMatch(
        r"^[a-zA-Z0-9][a-zA-Z0-9.-]{0,62}$"))
    user = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=256))
    workdir = fields.String(load_default=None, allow_none=True, validate=FullMatch(r"^/.*$"))
    healthcheck = fields.Nested(HealthcheckSchema, load_default=None, allow_none=True)
    pull = fields.String(load_default="missing", validate=validate.OneOf(["missing", "always", "never"]))
    registry = fields.String(load_default=None, allow_none=True)
    wait_for = fields.String(load_default="running", validate=validate.OneOf(["running", "healthy", "none"]))
    wait_timeout = fields.Float(load_default=60, validate=validate.Range(min=1, max=3600))
    replace = fields.Boolean(load_default=False)
    start = fields.Boolean(load_default=True)
    # Asked-for privileges: accepted so the policy can refuse them by name (403).
    privileged = fields.Boolean(load_default=False)
    cap_add = fields.List(fields.String(), load_default=list)
    cap_drop = fields.List(fields.String(), load_default=list)
    devices = fields.List(fields.String(), load_default=list)
    sysctls = _StringMap(load_default=dict)
    security_opt = fields.List(fields.String(), load_default=list)
    pid_mode = fields.String(load_default=None, allow_none=True)
    ipc_mode = fields.String(load_default=None, allow_none=True)
    uts_mode = fields.String(load_default=None, allow_none=True)
    userns_mode = fields.String(load_default=None, allow_none=True)
    cgroupns = fields.String(load_default=None, allow_none=True)

    @pre_load
    def reject_null_lists(self, data: Any, **_: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items()
                    if not (v is None and k in ("ports", "volumes", "env", "labels"))}
        return data

    @validates_schema
    def check_ports_unique(self, data: dict, **_: Any) -> None:
        seen: set[tuple] = set()
        for port in data.get("ports") or []:
            if port["host_port"] is None:
                continue
            key = (port["host_ip"] or "*", port["host_port"], port["protocol"])
            if key in seen:
                raise ValidationError(f"host port {port['host_port']}/{port['protocol']} is "
                                      "mapped twice", "ports")
            seen.add(key)
        if data.get("wait_for") == "healthy" and data.get("start") is False:
            raise ValidationError("wait_for healthy needs start: true", "wait_for")


class ContainerListArgsSchema(Schema):
    all = fields.Boolean(load_default=False)
    limit = fields.Integer(load_default=None, validate=validate.Range(min=1, max=10000))
    latest = fields.Boolean(load_default=False)
    name = fields.String(validate=FullMatch(CONTAINER_NAME))
    label = fields.List(fields.String(validate=validate.Length(min=1, max=512)), load_default=list)
    status = fields.String(validate=validate.OneOf(
        ["created", "restarting", "running", "removing", "paused", "exited", "dead"]))
    ancestor = fields.String(validate=validate.Length(min=1, max=512))


class ContainerPortSchema(Schema):
    container_port = fields.Integer()
    protocol = fields.String()
    host_ip = fields.String(allow_none=True)
    host_port = fields.Integer(allow_none=True)


class ContainerSummarySchema(Schema):
    id = fields.String()
    name = fields.String()
    names = fields.List(fields.String())
    image = fields.String()
    image_id = fields.String()
    command = fields.String()
    created = fields.Integer()
    state = fields.String()
    status = fields.String()
    ports = fields.List(fields.Nested(ContainerPortSchema))
    labels = fields.Dict(keys=fields.String(), values=fields.String())


class MountSchema(Schema):
    type = fields.String()
    source = fields.String(allow_none=True)
    target = fields.String()
    read_only = fields.Boolean()
    name = fields.String(allow_none=True)


class ProvisionResultSchema(Schema):
    id = fields.String()
    name = fields.String()
    image = fields.String()
    state = fields.String()
    health = fields.String(allow_none=True)
    ports = fields.List(fields.Nested(ContainerPortSchema))
    mounts = fields.List(fields.Nested(MountSchema))
    adopted = fields.Boolean()


class NoArgsSchema(Schema):
    """A lifecycle verb that takes no arguments (an empty body, or none)."""


class StopArgsSchema(Schema):
    timeout = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0, max=3600))


class KillArgsSchema(Schema):
    signal = fields.String(load_default="SIGKILL")

    @validates_schema
    def check_signal(self, data: dict, **_: Any) -> None:
        value = data.get("signal", "SIGKILL")
        if not (value.isdigit() and 0 < int(value) < 65) and value.upper() not in SIGNALS:
            raise ValidationError(f"'{value}' is not a signal", "signal")


class RemoveArgsSchema(Schema):
    force = fields.Boolean(load_default=False)
    volumes = fields.Boolean(load_default=False)


class LogsArgsSchema(Schema):
    tail = fields.String(load_default="all")
    since = fields.String(load_default=None)
    until = fields.String(load_default=None)
    timestamps = fields.Boolean(load_default=False)
    follow = fields.Boolean(load_default=False)

    @validates_schema
    def check_tail(self, data: dict, **_: Any) -> None:
        tail = data.get("tail", "all")
        if tail != "all" and not tail.isdigit():
            raise ValidationError("tail is 'all' or a number of lines ≥ 0", "tail")


class ExecSpecSchema(Schema):
    """``docker exec`` (non-interactive) as JSON."""

    cmd = _Argv(required=True, validate=validate.Length(min=1, max=4096))
    env = _StringMap(load_default=dict)
    workdir = fields.String(load_default=None, allow_none=True, validate=FullMatch(r"^/.*$"))
    user = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=256))
    privileged = fields.Boolean(load_default=False)
    timeout = _Duration(load_default=30.0, validate=validate.Range(min=0.1, max=300))
    # Accepted so the answer can point to POST …/sessions (interactive exec).
    tty = fields.Boolean(load_default=False)
    interactive = fields.Boolean(load_default=False)


class ExecResultSchema(Schema):
    exit_code = fields.Integer(allow_none=True)
    output = fields.String()
    truncated = fields.Boolean()


class ContainerStateResultSchema(Schema):
    """Where a lifecycle verb left the container."""

    id = fields.String()
    name = fields.String()
    state = fields.String()
    exit_code = fields.Integer(allow_none=True)
    health = fields.String(allow_none=True)


class ContainerRemovedResultSchema(Schema):
    id = fields.String()
    name = fields.String()
    removed = fields.Boolean()


class WaitResultSchema(Schema):
    id = fields.String()
    status_code = fields.Integer(allow_none=True, metadata={"description": "the exit code"})
    error = fields.String(allow_none=True)


class RenameResultSchema(Schema):
    id = fields.String()
    name = fields.String()
    previous_name = fields.String()


class UpdateResultSchema(Schema):
    """The container's limits after the update."""

    id = fields.String()
    name = fields.String()
    memory = fields.Integer(allow_none=True, metadata={"description": "bytes; null: no limit"})
    cpus = fields.Float(allow_none=True, metadata={"description": "null: no limit"})
    restart_policy = fields.Nested(RestartPolicySchema)
    warnings = fields.List(fields.String())


class PruneResultSchema(Schema):
    deleted = fields.List(fields.String(), metadata={"description": "ids (names for volumes)"})
    space_reclaimed = fields.Integer(metadata={"description": "bytes"})


class RemovedContainerOutcomeSchema(Schema):
    id = fields.String()
    name = fields.String()
    outcome = fields.String(validate=validate.OneOf(["removed", "skipped", "failed"]))
    reason = fields.String()
    status = fields.Integer(metadata={"description": "the engine's status when it failed"})


class RemoveMatchingResultSchema(Schema):
    matched = fields.Integer()
    removed = fields.Integer()
    skipped = fields.Integer()
    failed = fields.Integer()
    containers = fields.List(fields.Nested(RemovedContainerOutcomeSchema))


class CommitResultSchema(Schema):
    image_id = fields.String()
    ref = fields.String()
    container = fields.String(metadata={"description": "the committed container's id"})
    pushed = fields.Nested(PushResultSchema, allow_none=True,
                           metadata={"description": "the push, when one was asked for"})


ProvisionJobSchema = job_of(ProvisionResultSchema, "ProvisionJobSchema")
ContainerStateJobSchema = job_of(ContainerStateResultSchema, "ContainerStateJobSchema")
ContainerRemovedJobSchema = job_of(ContainerRemovedResultSchema, "ContainerRemovedJobSchema")
ExecJobSchema = job_of(ExecResultSchema, "ExecJobSchema")
WaitJobSchema = job_of(WaitResultSchema, "WaitJobSchema")
RenameJobSchema = job_of(RenameResultSchema, "RenameJobSchema")
UpdateJobSchema = job_of(UpdateResultSchema, "UpdateJobSchema")
ContainerPruneJobSchema = job_of(PruneResultSchema, "ContainerPruneJobSchema")
RemoveMatchingJobSchema = job_of(RemoveMatchingResultSchema, "RemoveMatchingJobSchema")
CommitJobSchema = job_of(CommitResultSchema, "CommitJobSchema")


class TopArgsSchema(Schema):
    ps_args = fields.String(load_default=None, validate=[
        validate.Length(min=1, max=256),
        FullMatch(r"^[A-Za-z0-9 ,=_-]+$", error="ps options are letters, digits, ' ', ',', '=', '_', '-'")])


class PortArgsSchema(Schema):
    """``docker port CONTAINER [PRIVATE_PORT[/PROTO]]``."""

    port = fields.String(load_default=None, validate=FullMatch(
        r"^\d{1,5}(/(tcp|udp|sctp))?$", error="PORT or PORT/PROTO, e.g. 8080/tcp"))


class TopSchema(Schema):
    titles = fields.List(fields.String())
    processes = fields.List(fields.List(fields.String()))


class StatsMemorySchema(Schema):
    usage = fields.Integer()
    limit = fields.Integer()
    percent = fields.Float()


class StatsSchema(Schema):
    """One ``docker stats --no-stream`` row, in bytes and percent."""

    id = fields.String()
    name = fields.String()
    cpu_percent = fields.Float()
    online_cpus = fields.Integer()
    memory = fields.Nested(StatsMemorySchema)
    network = fields.Dict(keys=fields.String(), values=fields.Integer())
    block_io = fields.Dict(keys=fields.String(), values=fields.Integer())
    pids = fields.Integer()
    read_at = fields.String(allow_none=True)


class ChangeSchema(Schema):
    path = fields.String()
    kind = fields.String(metadata={"description": "A added, C changed, D deleted"})


class WaitSpecSchema(Schema):
    condition = fields.String(load_default="not-running", validate=validate.OneOf(
        ["not-running", "next-exit", "removed"]))
    timeout = _Duration(load_default=300.0, validate=validate.Range(min=0.1, max=3000))


class RenameSpecSchema(Schema):
    name = fields.String(required=True, validate=FullMatch(
        CONTAINER_NAME, error="names are [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128"))


class UpdateSpecSchema(Schema):
    """``docker update``: the limits provision takes, validated the same way."""

    memory = _Size(load_default=None, allow_none=True)
    cpus = fields.Float(load_default=None, allow_none=True, validate=validate.Range(min=0.01, max=1024))
    restart_policy = fields.Nested(RestartPolicySchema, load_default=None, allow_none=True)

    @validates_schema
    def check_something_changes(self, data: dict, **_: Any) -> None:
        if all(data.get(k) is None for k in ("memory", "cpus", "restart_policy")):
            raise ValidationError("give at least one of memory, cpus, restart_policy", "_schema")
        if data.get("memory") is not None and data["memory"] < 6 << 20:
            raise ValidationError("the engine's minimum memory limit is 6m", "memory")


class _Labels(fields.Field):
    """Label filters: ``KEY`` or ``KEY=VALUE``, one string or a list of them."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(
                isinstance(v, str) and 0 < len(v) <= 512 for v in value):
            raise ValidationError("a label filter is KEY or KEY=VALUE, or a list of them")
        return value


class PruneFiltersSchema(Schema):
    label = _Labels(load_default=list)
    until = fields.String(load_default=None, allow_none=True, validate=FullMatch(
        r"^(\d+(\.\d+)?|\d+(h|m|s|ms)(\d+(h|m|s|ms))*|\d{4}-\d\d-\d\d[T ][0-9:.]+(Z|[+-]\d\d:\d\d)?)$",
        error="a timestamp, RFC 3339 time or duration such as 24h"))


class PruneSpecSchema(Schema):
    """``docker container prune --filter label=… --filter until=…``."""

    filters = fields.Nested(PruneFiltersSchema, load_default=lambda: {"label": [], "until": None})
    managed_only = fields.Boolean(load_default=True)


class BulkRemoveArgsSchema(Schema):
    """``docker rm [-f] [-v] $(docker ps -aq --filter …)``: filters as in ``docker ps``."""

    label = fields.List(fields.String(validate=validate.Length(min=1, max=512)), load_default=list)
    status = fields.String(load_default=None, validate=validate.OneOf(
        ["created", "restarting", "running", "removing", "paused", "exited", "dead"]))
    ancestor = fields.String(load_default=None, validate=validate.Length(min=1, max=512))
    name = fields.String(load_default=None, validate=FullMatch(CONTAINER_NAME))
    force = fields.Boolean(load_default=False)
    volumes = fields.Boolean(load_default=False)
    managed_only = fields.Boolean(load_default=True)
    all = fields.Boolean(load_default=False, metadata={
        "description": "required to remove every container when no filter is given"})

    @validates_schema
    def check_filtered(self, data: dict, **_: Any) -> None:
        filtered = data.get("label") or any(data.get(k) for k in ("status", "ancestor", "name"))
        if not filtered and not data.get("all"):
            raise ValidationError("give at least one filter (label, status, ancestor, name), "
                                  "or all=true to remove every container you may remove", "all")
