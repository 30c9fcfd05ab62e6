"""Interactive sessions (``docker exec -it``, ``docker attach``) as JSON."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from schemas.common import FullMatch
from schemas.containers import _Argv, _StringMap


class SessionSpecSchema(Schema):
    """``{cmd, tty, user, workdir, env, size}`` for ``exec -it``, or ``{attach: true, size}``."""

    cmd = _Argv(load_default=None, allow_none=True, validate=validate.Length(min=1, max=4096))
    tty = fields.Boolean(load_default=True)
    user = fields.String(load_default=None, allow_none=True,
                         validate=validate.Length(min=1, max=256))
    workdir = fields.String(load_default=None, allow_none=True, validate=FullMatch(r"^/.*$"))
    env = _StringMap(load_default=dict)
    # Accepted so that asking for it is the policy's 403 (no-privileged), not a 422.
    privileged = fields.Boolean(load_default=False)
    attach = fields.Boolean(load_default=False)
    size = fields.List(fields.Integer(validate=validate.Range(min=1, max=10_000)),
                       load_default=None, allow_none=True, validate=validate.Length(equal=2),
                       metadata={"description": "[cols, rows]: the terminal's size from the "
                                 "start (a resize right after would race the shell's start-up)"})

    @validates_schema
    def _exec_or_attach(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["attach"]:
            extra = [name for name in ("cmd", "user", "workdir") if data.get(name)]
            extra += ["env"] if data.get("env") else []
            if extra:
                raise ValidationError({name: ["not with attach: true"] for name in extra})
        elif not data.get("cmd"):
            raise ValidationError({"cmd": ["a command, or attach: true"]})


class SessionSchema(Schema):
    """A session waiting for its WebSocket: connect to ``url`` before ``expires_at``."""

    id = fields.String(required=True)
    expires_at = fields.String(required=True, metadata={"description": "when the ticket in "
                                                        "`url` stops being accepted"})
    url = fields.String(required=True, metadata={"description": "WebSocket path (ws:// or "
                                                 "wss:// on this API) with a single-use ticket"})
