"""/hosts/auto/containers: provision on the best matching host, or on every matching host."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import principal, requires, start_job
from api.services.images import check_registry_credentials
from app.core.errors import ConflictError
from app.core.task_names import CONTAINERS_EXISTS, CONTAINERS_PROVISION
from app.fleet.placement import select_hosts
from app.jobs.dispatch import run_queries, submit_fanout, submit_job
from app.runtime import runtime
from app.security.policy import policy_from_settings
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
        args = [body, caller.as_caller()]
        target = body["name"] or body["image"]
        targets: list[dict[str, Any]] = []

        def place() -> None:
            # After an Idempotency-Key replay has had its chance: a retried placement answers
            # with its original job, not with a 409 for the name it took itself.
            targets.extend(select_hosts(runtime().hosts.list(), placement["labels"],
                                        placement["mode"], caller))
            if body["name"] and not body["replace"]:
                taken = [r["name"] for r, used in zip(
                    targets, run_queries([(CONTAINERS_EXISTS, r, [body["name"]])
                                          for r in targets]), strict=True) if used is True]
                if taken:
                    raise ConflictError(f"container name '{body['name']}' is already in use "
                                        f"on {', '.join(taken)}", name=body["name"], hosts=taken)

        def submit(idempotency: tuple[str, str] | None) -> tuple[dict[str, Any], bool]:
            if placement["mode"] == "all":
                return submit_fanout(CONTAINERS_PROVISION, caller, host_records=targets,
                                     target=target, args=args, idempotency=idempotency)
            return submit_job(CONTAINERS_PROVISION, caller, host_record=targets[0],
                              target=target, args=args, idempotency=idempotency)

        # The same path as every other submission: Idempotency-Key, callback_url, audit.
        return start_job(CONTAINERS_PROVISION, host_record=None, target=target, args=args,
                         precheck=place, submit=submit)
