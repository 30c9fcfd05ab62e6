"""Schemas for /hosts/{host}/volumes (``docker volume …``)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from schemas.common import LABEL_NOT_DESCRIPTION, FullMatch, PruneFiltersSchema, job_of
from schemas.containers import PruneResultSchema

# The engine's own rule for volume names (at least two characters).
VOLUME_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,254}$"
VOLUME_NAME_ERROR = "volume names are [a-zA-Z0-9][a-zA-Z0-9_.-]+, 2 to 255 characters"
# A driver is a plugin name, optionally ``repo/name:tag``.
DRIVER = r"^[a-z0-9][a-z0-9_.:/-]{0,254}$"
_LABEL_FILTER = fields.String(validate=validate.Length(min=1, max=512))


class VolumeListArgsSchema(Schema):
    dangling = fields.Boolean(load_default=None, metadata={"description": "`-f dangling=…`"})
    name = fields.String(validate=validate.Length(min=1, max=255),
                         metadata={"description": "`-f name=…`, matched as docker does "
                                                  "(a part of the name)"})
    label = fields.List(_LABEL_FILTER, load_default=list)


class VolumeSummarySchema(Schema):
    """A volume as ``docker volume ls`` and ``docker volume create`` know it."""

    name = fields.String(required=True)
    driver = fields.String()
    mountpoint = fields.String()
    scope = fields.String()
    labels = fields.Dict(keys=fields.String(), values=fields.String())
    options = fields.Dict(keys=fields.String(), values=fields.String())
    created_at = fields.String(allow_none=True)


class VolumeCreateSchema(Schema):
    """``docker volume create [--driver D] [--label K=V] [NAME]``.

    Driver options are not accepted: the local driver's ``o=bind,device=…`` would mount
    any host path, around the bind-mount policy.
    """

    name = fields.String(load_default=None, allow_none=True,
                         validate=FullMatch(VOLUME_NAME, error=VOLUME_NAME_ERROR))
    driver = fields.String(load_default="local", validate=FullMatch(DRIVER))
    labels = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=256)),
                         values=fields.String(validate=validate.Length(max=4096)),
                         load_default=dict)


class VolumeRemoveArgsSchema(Schema):
    force = fields.Boolean(load_default=False)


class VolumePruneFiltersSchema(PruneFiltersSchema):
    label = fields.List(_LABEL_FILTER)
    label_not = fields.List(_LABEL_FILTER, metadata={"description": LABEL_NOT_DESCRIPTION})


class VolumePruneSchema(Schema):
    """``docker volume prune [--filter label=…]``: volumes no container uses."""

    filters = fields.Nested(VolumePruneFiltersSchema, load_default=dict)


def volume_prune_filters(filters: dict) -> dict:
    """Loaded prune filters as the engine names them."""
    names = {"label": "label", "label_not": "label!"}
    return {names[key]: value for key, value in filters.items() if value}


class VolumeCreatedResultSchema(VolumeSummarySchema):
    created = fields.Boolean(metadata={"description": "false: the named volume already existed"})


class VolumeRemovedResultSchema(Schema):
    name = fields.String()
    removed = fields.Boolean()


VolumeCreatedJobSchema = job_of(VolumeCreatedResultSchema, "VolumeCreatedJobSchema")
VolumeRemovedJobSchema = job_of(VolumeRemovedResultSchema, "VolumeRemovedJobSchema")
VolumePruneJobSchema = job_of(PruneResultSchema, "VolumePruneJobSchema")
