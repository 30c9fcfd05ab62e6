"""Marshmallow schemas, one module per API resource."""
