"""/audit (the append-only audit log) and /policy/check (a dry run of the container policy)."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import principal, requires
from app.runtime import runtime
from app.security.policy import policy_from_settings
from schemas.audit import AuditArgsSchema, AuditPageSchema, PolicyCheckSchema
from schemas.containers import ProvisionSpecSchema

blp = Blueprint("audit", __name__, description="Audit log and policy dry-run")


@blp.route("/audit")
class Audit(MethodView):
    @requires("admin")
    @blp.arguments(AuditArgsSchema, location="query")
    @blp.response(200, AuditPageSchema)
    def get(self, args: dict) -> dict:
        """Audit entries, newest first (append-only: no route edits or removes them)."""
        def ms(key: str) -> int | None:
            # Stream ids start at 0: a time before 1970 means "from the beginning".
            return max(0, int(args[key].timestamp() * 1000)) if args.get(key) else None

        items, next_cursor = runtime().audit.query(
            actor=args.get("actor"), host=args.get("host"), outcome=args.get("outcome"),
            since_ms=ms("since"), until_ms=ms("until"), limit=args["limit"],
            cursor=args.get("cursor"))
        return {"items": items, "next_cursor": next_cursor}


@blp.route("/policy/check")
class PolicyCheck(MethodView):
    @requires("viewer")
    @blp.arguments(ProvisionSpecSchema)
    @blp.response(200, PolicyCheckSchema)
    def post(self, spec: dict) -> dict:
        """Every policy rule a provision spec would break for this token; creates nothing."""
        found = policy_from_settings(runtime().settings).violations(
            spec, principal().role == "admin")
        return {"allowed": not found,
                "violations": [{"rule": v.rule, "detail": v.detail} for v in found]}
