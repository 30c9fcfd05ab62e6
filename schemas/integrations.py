"""Schemas for /integrations: chat users and slash-command replies."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

_USER_ID = validate.Length(min=1, max=64)


class ChatUserSpecSchema(Schema):
    """`POST /integrations/{platform}/users`: who a chat user acts as."""

    user_id = fields.String(required=True, validate=_USER_ID,
                            metadata={"description": "Slack or Mattermost user id"})
    token_id = fields.String(load_default=None, allow_none=True,
                             validate=validate.Length(min=1, max=64), metadata={
                                 "description": "act with this token's role and host scope "
                                                "(revoking the token revokes the chat user)"})
    role = fields.String(load_default=None, allow_none=True,
                         validate=validate.OneOf(["viewer", "operator", "admin"]),
                         metadata={"description": "without token_id: the role to act with"})
    hosts = fields.List(fields.String(validate=validate.Length(min=1, max=128)),
                        load_default=None, allow_none=True,
                        metadata={"description": "with role: host scope (default: every host)"})
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=128),
                         metadata={"description": "shown as requested_by on jobs"})

    @validates_schema
    def check_token_or_role(self, data: dict, **_: object) -> None:
        if bool(data.get("token_id")) == bool(data.get("role")):
            raise ValidationError("give either token_id or role (with hosts)", "role")
        if data.get("token_id") and data.get("hosts") is not None:
            raise ValidationError("the token's own host scope applies", "hosts")


class ChatUserSchema(ChatUserSpecSchema):
    platform = fields.String()
    created_at = fields.String()
    created_by = fields.String()


class ChatReplySchema(Schema):
    """What Slack and Mattermost show: ephemeral text (only the caller sees it)."""

    response_type = fields.String()
    text = fields.String()
