"""/tokens: API tokens with roles and host scope; the secret is shown once."""

from __future__ import annotations

from datetime import UTC, datetime

from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import principal, requires
from app.errors import ForbiddenError, InvalidInputError
from app.runtime import runtime
from schemas.tokens import TokenCreatedSchema, TokenCreateSchema, TokenSchema

blp = Blueprint("tokens", __name__, description="API tokens (admin)")


@blp.route("/tokens")
class Tokens(MethodView):
    @requires("admin")
    @blp.response(200, TokenSchema(many=True))
    def get(self) -> list[dict]:
        """List tokens (never their secrets)."""
        return runtime().tokens.list()

    @requires("admin")
    @blp.arguments(TokenCreateSchema)
    @blp.response(201, TokenCreatedSchema)
    def post(self, body: dict) -> dict:
        """Create a token; the answer holds the secret, which is not stored and not shown again."""
        caller = principal()
        if caller.hosts is not None and (body["hosts"] is None
                                         or not set(body["hosts"]) <= caller.hosts):
            raise ForbiddenError("a host-scoped token can only create tokens within its own "
                                 f"hosts ({', '.join(sorted(caller.hosts))})")
        expires = body["expires_at"]
        if expires is not None and expires <= datetime.now(UTC):
            raise InvalidInputError("expires_at is in the past",
                                    errors={"expires_at": ["must be in the future"]})
        expires_at = expires.astimezone(UTC).isoformat(timespec="seconds").replace(
            "+00:00", "Z") if expires else None
        record, secret = runtime().tokens.create(body["name"], body["role"], body["hosts"],
                                                 expires_at, body["rate_limit"])
        return {**record, "token": secret}


@blp.route("/tokens/<string:token_id>")
class Token(MethodView):
    @requires("admin")
    @blp.response(204)
    def delete(self, token_id: str) -> None:
        """Revoke a token."""
        runtime().tokens.delete(token_id)
