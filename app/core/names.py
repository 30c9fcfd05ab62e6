"""Shared names and patterns: the constants both the schemas and the services check against.

Dependency-free on purpose (standard library only): ``schemas/`` may import this module and
marshmallow, nothing else, so loading a schema never loads Redis, cryptography or docker-py.
"""

from __future__ import annotations

# A host, registry or other record name Dockyard stores and routes by.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
# How a host's jobs reach its engine: through the central workers or its own agent.
ROUTES = ("central", "agent")
# Token roles, weakest first.
ROLES = ("viewer", "operator", "admin")
