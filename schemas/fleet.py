"""Schemas for placed and fanned-out provisions."""

from marshmallow import Schema, fields, validate

from schemas.containers import ProvisionSpecSchema


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
