"""/tokens: API tokens with roles and host scope; the secret is shown once."""

from __future__ import annotations

from datetime import UTC, datetime

from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import principal, requires
from app.core.errors import InvalidInputError, PolicyViolationError
from app.runtime import runtime
from app.security.auth import BOOTSTRAP_ID, GRANT_RULE, Principal
from schemas.tokens import TokenCreatedSchema, TokenCreateSchema, TokenSchema

blp = Blueprint("tokens", __name__, description="API tokens (admin)")


@blp.route("/tokens")
class Tokens(MethodView):
    @requires("admin")
    @blp.response(200, TokenSchema(many=True))
    def get(self) -> list[dict]:
        """List tokens (never their secrets)."""
        caller = principal()
        return [t for t in runtime().tokens.list() if _within(caller, t.get("hosts"))]

    @requires("admin")
    @blp.arguments(TokenCreateSchema)
    @blp.response(201, TokenCreatedSchema)
    def post(self, body: dict) -> dict:
        """Create a token; the answer holds the secret, which is not stored and not shown again."""
        principal().require_grant_within_scope(body["role"], body["hosts"], "a new token")
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
        """Revoke a token; a host-scoped admin revokes only tokens inside its own scope.

        The bootstrap admin token is configuration (DOCKYARD_ADMIN_TOKEN): 409.
        """
        caller = principal()
        if token_id != BOOTSTRAP_ID and not _within(caller, runtime().tokens.get(token_id)
                                                    .get("hosts")):
            raise PolicyViolationError(GRANT_RULE, f"token '{caller.name}' is scoped to hosts "
                                       f"({', '.join(sorted(caller.hosts or ()))}) and cannot "
                                       f"revoke token '{token_id}', whose scope is wider")
        runtime().tokens.delete(token_id)


def _within(caller: Principal, hosts: list[str] | None) -> bool:
    """True if a token scoped to ``hosts`` (None: every host) lies inside ``caller``'s scope."""
    if caller.hosts is None:
        return True
    return hosts is not None and set(hosts) <= caller.hosts
