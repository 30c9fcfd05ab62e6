"""/hosts/{host}/volumes: docker volume ls, create, inspect, rm and prune."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import charged_by_job, host_record, principal, requires, start_job
from app.core.errors import ConflictError
from app.core.task_names import (
    VOLUMES_CREATE,
    VOLUMES_FIND,
    VOLUMES_INSPECT,
    VOLUMES_LIST,
    VOLUMES_PRUNE,
    VOLUMES_REMOVE,
)
from app.jobs.dispatch import run_query
from app.security.policy import SCOPE_LABEL, Violation, label_violations, raise_for
from schemas.volumes import (
    VolumeCreatedJobSchema,
    VolumeCreateSchema,
    VolumeListArgsSchema,
    VolumePruneJobSchema,
    VolumePruneSchema,
    VolumeRemoveArgsSchema,
    VolumeRemovedJobSchema,
    VolumeSummarySchema,
    volume_prune_filters,
)

blp = Blueprint("volumes", __name__, description="Volumes on a host")


@blp.route("/hosts/<string:host>/volumes")
class Volumes(MethodView):
    @requires("viewer")
    @blp.arguments(VolumeListArgsSchema, location="query")
    @blp.response(200, VolumeSummarySchema(many=True))
    def get(self, args: dict, host: str) -> list[dict]:
        """`docker volume ls [-f dangling=…] [-f name=…] [-f label=…]`."""
        query = {"dangling": args["dangling"], "name": args.get("name"),
                 "labels": args["label"] or None}
        return run_query(VOLUMES_LIST, host_record(host), [query])

    @charged_by_job
    @requires("operator")
    @blp.arguments(VolumeCreateSchema)
    @blp.response(202, VolumeCreatedJobSchema)
    def post(self, spec: dict, host: str) -> Any:
        """`docker volume create [--driver D] [--label K=V] [NAME]` (job).

        As with docker, an existing name with the same driver answers that volume; with
        another driver it is a 409.
        """
        record = host_record(host)
        _check_volume_spec(spec)

        def driver_matches() -> None:
            existing = run_query(VOLUMES_FIND, record, [spec["name"]]) if spec["name"] else None
            if existing and existing["driver"] != spec["driver"]:
                raise ConflictError(f"volume '{spec['name']}' already exists on host '{host}' "
                                    f"with driver '{existing['driver']}'", name=spec["name"])

        return start_job(VOLUMES_CREATE, host_record=record, target=spec["name"],
                         args=[spec["name"], spec["driver"],
                               {**spec["labels"], SCOPE_LABEL: principal().scope}],
                         precheck=driver_matches)


def _check_volume_spec(spec: dict) -> None:
    """Non-admins make plain local volumes only (another driver may mount anything), and
    no label under Dockyard's reserved prefix (403 naming the rule)."""
    if principal().is_admin:
        return  # admins make what they vouch for (DOCKYARD_ALLOWED_VOLUMES lets others mount it)
    found = []
    if spec["driver"] != "local":
        found.append(Violation("volume-drivers", f"driver '{spec['driver']}' is not allowed; "
                                                 "only 'local' volumes may be created"))
    found += label_violations(spec["labels"])
    raise_for(found)


@blp.route("/hosts/<string:host>/volumes/prune")
class VolumePrune(MethodView):
    @charged_by_job
    @requires("operator")
    @blp.arguments(VolumePruneSchema)
    @blp.response(202, VolumePruneJobSchema)
    def post(self, spec: dict, host: str) -> Any:
        """`docker volume prune [--filter label=…]` (job): volumes no container uses."""
        return start_job(VOLUMES_PRUNE, host_record=host_record(host), target=None,
                         args=[volume_prune_filters(spec["filters"]), principal().as_caller()])


@blp.route("/hosts/<string:host>/volumes/<string:name>")
class Volume(MethodView):
    @requires("viewer")
    @blp.response(200, description="the engine's `docker volume inspect` document")
    def get(self, host: str, name: str) -> dict:
        """`docker volume inspect NAME`."""
        return run_query(VOLUMES_INSPECT, host_record(host), [name])

    @charged_by_job
    @requires("operator")
    @blp.arguments(VolumeRemoveArgsSchema, location="query")
    @blp.response(202, VolumeRemovedJobSchema)
    def delete(self, args: dict, host: str, name: str) -> Any:
        """`docker volume rm [-f] NAME` (job); a volume a container uses is a 409."""
        return start_job(VOLUMES_REMOVE, host_record=host_record(host), target=name,
                         args=[name, args["force"], principal().as_caller()], body=args)
