"""/tokens: API tokens with roles and host scope; the secret is shown once."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import requires
from app.runtime import runtime
from app.store import utcnow
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
        expires = body["expires_at"]
        expires_at = expires.isoformat().replace("+00:00", "Z") if expires else None
        if expires_at and expires_at <= utcnow():
            from app.errors import InvalidInputError
            raise InvalidInputError("expires_at is in the past",
                                    errors={"expires_at": ["must be in the future"]})
        record, secret = runtime().tokens.create(body["name"], body["role"], body["hosts"],
                                                 expires_at)
        return {**record, "token": secret}


@blp.route("/tokens/<string:token_id>")
class Token(MethodView):
    @requires("admin")
    @blp.response(204)
    def delete(self, token_id: str) -> None:
        """Revoke a token."""
        runtime().tokens.delete(token_id)
