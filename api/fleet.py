"""/hosts/auto/containers: provision on the best matching host, or on every matching host."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import job_answer, principal, requires
from api.images import check_registry_credentials
from app.dispatch import run_queries, submit_fanout, submit_job
from app.errors import ConflictError
from app.placement import select_hosts
from app.policy import policy_from_settings
from app.runtime import runtime
from app.task_names import CONTAINERS_EXISTS, CONTAINERS_PROVISION
from schemas.fleet import PlacedProvisionJobSchema, PlacedProvisionSchema

blp = Blueprint("fleet", __name__, description="Placement and fan-out across hosts")


@blp.route("/hosts/auto/containers")
class PlacedContainers(MethodView):
    @requires("operator")
    @blp.arguments(PlacedProvisionSchema)
    @blp.response(202, PlacedProvisionJobSchema)
    def post(self, body: dict) -> Any:
        """`docker run -d` on the least-loaded matching host, or on all of them (job)."""
        placement = body.pop("placement")
        caller = principal()
        policy_from_settings(runtime().settings).enforce(body, caller.role == "admin")
        check_registry_credentials(body["image"], body.get("registry"))
        targets = select_hosts(runtime().hosts.list(), placement["labels"], placement["mode"],
                               caller)
        if body["name"] and not body["replace"]:
            taken = [r["name"] for r, used in zip(
                targets, run_queries([(CONTAINERS_EXISTS, r, [body["name"]]) for r in targets]),
                strict=True) if used is True]
            if taken:
                raise ConflictError(f"container name '{body['name']}' is already in use on "
                                    f"{', '.join(taken)}", name=body["name"], hosts=taken)
        key = request.headers.get("Idempotency-Key")
        idempotency = (key, runtime().idempotency.fingerprint(
            request.method, request.path, request.get_json(silent=True))) if key else None
        args = [body, caller.as_caller()]
        target = body["name"] or body["image"]
        if placement["mode"] == "all":
            record, _ = submit_fanout(CONTAINERS_PROVISION, caller, host_records=targets,
                                      target=target, args=args, idempotency=idempotency)
        else:
            record, _ = submit_job(CONTAINERS_PROVISION, caller, host_record=targets[0],
                                   target=target, args=args, idempotency=idempotency)
        return job_answer(record)
