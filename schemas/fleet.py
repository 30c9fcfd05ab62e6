"""Schemas for placed and fanned-out provisions."""

from marshmallow import Schema, fields, validate

from schemas.common import job_of
from schemas.containers import ProvisionResultSchema, ProvisionSpecSchema


class PlacementSchema(Schema):
    labels = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=128)),
                         values=fields.String(validate=validate.Length(max=256)),
                         load_default=dict, metadata={"description": "host label selector"})
    mode = fields.String(load_default="least-loaded", validate=validate.OneOf(
        ["least-loaded", "all"]), metadata={
        "description": "least-loaded: one host with the fewest running containers; "
                       "all: a parent job with one child per matching host"})


class PlacedProvisionSchema(ProvisionSpecSchema):
    """A provision spec plus where to place it."""

    placement = fields.Nested(PlacementSchema, load_default=lambda: {"labels": {},
                                                                     "mode": "least-loaded"})


class FanoutChildSchema(Schema):
    job = fields.String()
    host = fields.String()
    state = fields.String()
    result = fields.Nested(ProvisionResultSchema, allow_none=True)
    error = fields.Dict(allow_none=True, metadata={"description": "the child job's problem"})


class PlacedProvisionResultSchema(ProvisionResultSchema):
    """One host's provision result (least-loaded), or ``children`` only (mode all)."""

    children = fields.List(fields.Nested(FanoutChildSchema), metadata={
        "description": "mode all: one entry per host, in the order the hosts were chosen"})


PlacedProvisionJobSchema = job_of(PlacedProvisionResultSchema, "PlacedProvisionJobSchema")
