"""/hosts/{host}/containers: run -d, ps, inspect, lifecycle, rm, logs, exec, top, stats, prune, …"""

from __future__ import annotations

from typing import Any

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import (
    call,
    caller_context,
    charged_by_job,
    host_record,
    redacted,
    requires,
    sse_response,
    start_job,
)
from api.services import containers as service
from api.services.containers import require_admin_for_unmanaged
from api.services.images import caller_policy, stored_registry_address
from app.core.errors import ConflictError, InvalidInputError
from app.core.task_names import (
    CONTAINERS_CHANGES,
    CONTAINERS_CHECK_RUNNING,
    CONTAINERS_COMMIT,
    CONTAINERS_EXEC,
    CONTAINERS_EXISTS,
    CONTAINERS_INSPECT,
    CONTAINERS_PORTS,
    CONTAINERS_PRUNE,
    CONTAINERS_REMOVE_MATCHING,
    CONTAINERS_RENAME,
    CONTAINERS_STATS,
    CONTAINERS_TOP,
    CONTAINERS_UPDATE,
    CONTAINERS_WAIT,
    TRANSFERS_FOLLOW_LOGS,
)
from app.engine.references import resolve_in_registry
from app.jobs.dispatch import open_stream, run_query
from app.runtime import runtime
from app.security.policy import enforce_local_name, policy_from_settings
from schemas.containers import (
    BulkRemoveArgsSchema,
    ChangeSchema,
    CommitJobSchema,
    ContainerListArgsSchema,
    ContainerPortSchema,
    ContainerPruneJobSchema,
    ContainerRemovedJobSchema,
    ContainerStateJobSchema,
    ContainerSummarySchema,
    ExecJobSchema,
    ExecSpecSchema,
    KillArgsSchema,
    LogsArgsSchema,
    NoArgsSchema,
    PortArgsSchema,
    ProvisionJobSchema,
    ProvisionSpecSchema,
    PruneSpecSchema,
    RemoveArgsSchema,
    RemoveMatchingJobSchema,
    RenameJobSchema,
    RenameSpecSchema,
    StatsSchema,
    StopArgsSchema,
    TopArgsSchema,
    TopSchema,
    UpdateJobSchema,
    UpdateSpecSchema,
    WaitJobSchema,
    WaitSpecSchema,
)
from schemas.images import CommitSpecSchema

blp = Blueprint("containers", __name__, description="Containers on a host")


@blp.route("/hosts/<string:host>/containers")
class Containers(MethodView):
    @requires("viewer")
    @blp.arguments(ContainerListArgsSchema, location="query")
    @blp.response(200, ContainerSummarySchema(many=True))
    def get(self, args: dict, host: str) -> list[dict]:
        """`docker ps [-a] [-n N] [-l]` with filters; one engine call."""
        return service.list_containers(call(), host=host, args=args)

    @charged_by_job
    @requires("operator")
    @blp.arguments(ProvisionSpecSchema)
    @blp.response(202, ProvisionJobSchema)
    def post(self, spec: dict, host: str) -> Any:
        """`docker run -d`: provision a container (job)."""
        return service.provision(call(), host=host, spec=spec)

    @charged_by_job
    @requires("operator")
    @blp.arguments(BulkRemoveArgsSchema, location="query")
    @blp.response(202, RemoveMatchingJobSchema)
    def delete(self, args: dict, host: str) -> Any:
        """`docker rm [-f] [-v] $(docker ps -aq --filter …)`: bulk removal by filter (job).

        At least one filter, or `all=true`. Containers not labelled `dockyard.managed=true`
        are skipped (and reported) unless an admin passes `managed_only=false`.
        """
        require_admin_for_unmanaged(call(), args["managed_only"])
        match = {"labels": args["label"] or None, "status": args["status"],
                 "ancestor": args["ancestor"], "name": args["name"]}
        described = [f"label={label}" for label in args["label"]] + [
            f"{key}={args[key]}" for key in ("status", "ancestor", "name") if args[key]]
        return start_job(CONTAINERS_REMOVE_MATCHING, host_record=host_record(host),
                         target=" ".join(described) or "all",
                         args=[match, args["force"], args["volumes"], args["managed_only"],
                               caller_context()])


@blp.route("/hosts/<string:host>/containers/prune")
class ContainerPrune(MethodView):
    @charged_by_job
    @requires("operator")
    @blp.arguments(PruneSpecSchema)
    @blp.response(202, ContainerPruneJobSchema)
    def post(self, spec: dict, host: str) -> Any:
        """`docker container prune [--filter label=…] [--filter until=…]` (job).

        Only containers labelled `dockyard.managed=true` unless an admin passes
        `managed_only: false`.
        """
        require_admin_for_unmanaged(call(), spec["managed_only"])
        filters = spec["filters"]
        return start_job(CONTAINERS_PRUNE, host_record=host_record(host), target=None,
                         args=[filters["label"], filters["until"], spec["managed_only"],
                               caller_context()])


@blp.route("/hosts/<string:host>/containers/<string:ref>")
class Container(MethodView):
    @requires("viewer")
    @blp.response(200, description="the engine's `docker inspect` document")
    def get(self, host: str, ref: str) -> dict:
        """`docker inspect`: by id, unique id prefix or name.

        Non-admins may inspect only containers Dockyard manages in their scope; viewers see
        environment values, secret-looking labels and command arguments redacted.
        """
        return redacted("inspect", run_query(CONTAINERS_INSPECT, host_record(host),
                                             [caller_context(), ref]))

    @charged_by_job
    @requires("operator")
    @blp.arguments(RemoveArgsSchema, location="query")
    @blp.response(202, ContainerRemovedJobSchema)
    def delete(self, args: dict, host: str, ref: str) -> Any:
        """`docker rm [-f] [-v]` (job)."""
        return service.remove(call(), host=host, ref=ref, args=args)


def _lifecycle(verb: str, schema: type, summary: str) -> None:
    """One path per lifecycle verb, each with its own body schema and operation."""

    class Lifecycle(MethodView):
        @charged_by_job
        @requires("operator")
        @blp.arguments(schema, required=False)
        @blp.response(202, ContainerStateJobSchema)
        def post(self, args: dict, host: str, ref: str) -> Any:
            return service.lifecycle(call(), host=host, ref=ref, verb=verb, args=args)

    Lifecycle.post.__doc__ = summary
    Lifecycle.__name__ = Lifecycle.__qualname__ = f"Container{verb.capitalize()}"
    blp.route(f"/hosts/<string:host>/containers/<string:ref>/{verb}",
              endpoint=f"container_{verb}")(Lifecycle)


for _verb, _schema, _summary in (
        ("start", NoArgsSchema, "`docker start` (job)."),
        ("stop", StopArgsSchema, "`docker stop [-t TIMEOUT]` (job); `{timeout}` in seconds."),
        ("restart", StopArgsSchema, "`docker restart [-t TIMEOUT]` (job); `{timeout}` in seconds."),
        ("kill", KillArgsSchema, "`docker kill [-s SIGNAL]` (job); `{signal}`, SIGKILL by default."),
        ("pause", NoArgsSchema, "`docker pause` (job)."),
        ("unpause", NoArgsSchema, "`docker unpause` (job).")):
    _lifecycle(_verb, _schema, _summary)


@blp.route("/hosts/<string:host>/containers/<string:ref>/logs")
class ContainerLogs(MethodView):
    @requires("viewer")
    @blp.arguments(LogsArgsSchema, location="query")
    @blp.response(200, description="text/plain: stdout and stderr, as `docker logs` prints "
                                   "them; with follow=true a text/event-stream, one `log` event "
                                   "per line, ending with `end` when the container stops")
    def get(self, args: dict, host: str, ref: str) -> Response:
        """`docker logs [--tail N] [--since] [--until] [-t] [-f]`."""
        if args["follow"]:
            if args["until"]:
                raise InvalidInputError("until cannot be combined with follow",
                                        errors={"until": ["not with follow=true"]})
            _meta, reader = open_stream(TRANSFERS_FOLLOW_LOGS, host_record(host), [
                caller_context(), ref, {
                "tail": args["tail"], "since": args["since"],
                "timestamps": args["timestamps"]}])
            return sse_response(reader, "log")
        return Response(service.logs(call(), host=host, ref=ref, args=args),
                        mimetype="text/plain")


@blp.route("/hosts/<string:host>/containers/<string:ref>/exec")
class ContainerExec(MethodView):
    @charged_by_job
    @requires("operator")
    @blp.arguments(ExecSpecSchema)
    @blp.response(202, ExecJobSchema)
    def post(self, spec: dict, host: str, ref: str) -> Any:
        """`docker exec` (non-interactive) (job); result `{exit_code, output, truncated}`.

        Use `?wait=N` for the answer in the response. Output is kept up to 1 MiB; a command
        that outlives `timeout` (default 30 s, at most 300 s) is killed and the job fails 504.
        """
        asked = [name for name in ("tty", "interactive") if spec.pop(name)]
        if asked:
            raise InvalidInputError(
                "an exec job is not interactive; for exec -it open a session: POST "
                f"/api/v1/hosts/{host}/containers/{ref}/sessions",
                errors={name: ["use POST …/sessions for an interactive exec"] for name in asked})
        policy_from_settings(runtime().settings).enforce_exec(spec, call().is_admin)
        record = host_record(host)
        return start_job(CONTAINERS_EXEC, host_record=record, target=ref,
                         args=[ref, spec, caller_context()],
                         precheck=lambda: run_query(CONTAINERS_CHECK_RUNNING, record,
                                                    [caller_context(), ref, "exec in"]))


@blp.route("/hosts/<string:host>/containers/<string:ref>/top")
class ContainerTop(MethodView):
    @requires("viewer")
    @blp.arguments(TopArgsSchema, location="query")
    @blp.response(200, TopSchema)
    def get(self, args: dict, host: str, ref: str) -> dict:
        """`docker top [ps OPTIONS]`: the processes of a running container (host PIDs)."""
        return redacted("top", run_query(CONTAINERS_TOP, host_record(host),
                                         [caller_context(), ref, args["ps_args"]]))


@blp.route("/hosts/<string:host>/containers/<string:ref>/stats")
class ContainerStats(MethodView):
    @requires("viewer")
    @blp.response(200, StatsSchema)
    def get(self, host: str, ref: str) -> dict:
        """`docker stats --no-stream`: one sample of CPU %, memory, network and block I/O."""
        return run_query(CONTAINERS_STATS, host_record(host), [caller_context(), ref])


@blp.route("/hosts/<string:host>/containers/<string:ref>/changes")
class ContainerChanges(MethodView):
    @requires("viewer")
    @blp.response(200, ChangeSchema(many=True))
    def get(self, host: str, ref: str) -> list[dict]:
        """`docker diff`: files added (A), changed (C) or deleted (D) in the container."""
        return run_query(CONTAINERS_CHANGES, host_record(host), [caller_context(), ref])


@blp.route("/hosts/<string:host>/containers/<string:ref>/port")
class ContainerPorts(MethodView):
    @requires("viewer")
    @blp.arguments(PortArgsSchema, location="query")
    @blp.response(200, ContainerPortSchema(many=True))
    def get(self, args: dict, host: str, ref: str) -> list[dict]:
        """`docker port [PRIVATE_PORT[/PROTO]]`: published ports and their host addresses."""
        mappings = run_query(CONTAINERS_PORTS, host_record(host), [caller_context(), ref])
        if args["port"]:
            number, _, protocol = args["port"].partition("/")
            mappings = [m for m in mappings if m["container_port"] == int(number)
                        and m["protocol"] == (protocol or "tcp")]
        return mappings


@blp.route("/hosts/<string:host>/containers/<string:ref>/wait")
class ContainerWait(MethodView):
    @charged_by_job
    @requires("operator")
    @blp.arguments(WaitSpecSchema)
    @blp.response(202, WaitJobSchema)
    def post(self, spec: dict, host: str, ref: str) -> Any:
        """`docker wait [--condition]` (job); result `{status_code, error}`."""
        return start_job(CONTAINERS_WAIT, host_record=host_record(host), target=ref,
                         args=[ref, spec["condition"], spec["timeout"], caller_context()])


@blp.route("/hosts/<string:host>/containers/<string:ref>/rename")
class ContainerRename(MethodView):
    @charged_by_job
    @requires("operator")
    @blp.arguments(RenameSpecSchema)
    @blp.response(202, RenameJobSchema)
    def post(self, spec: dict, host: str, ref: str) -> Any:
        """`docker rename` (job); 409 if the name is taken."""
        record = host_record(host)

        def name_is_free() -> None:
            if run_query(CONTAINERS_EXISTS, record, [spec["name"]]):
                raise ConflictError(f"container name '{spec['name']}' is already in use on "
                                    f"host '{host}'", name=spec["name"])

        return start_job(CONTAINERS_RENAME, host_record=record, target=ref,
                         args=[ref, spec["name"], caller_context()], precheck=name_is_free)


@blp.route("/hosts/<string:host>/containers/<string:ref>/update")
class ContainerUpdate(MethodView):
    @charged_by_job
    @requires("operator")
    @blp.arguments(UpdateSpecSchema)
    @blp.response(202, UpdateJobSchema)
    def post(self, spec: dict, host: str, ref: str) -> Any:
        """`docker update --memory --cpus --restart` (job)."""
        return start_job(CONTAINERS_UPDATE, host_record=host_record(host), target=ref,
                         args=[ref, spec, caller_context()])


@blp.route("/hosts/<string:host>/containers/<string:ref>/commit")
class ContainerCommit(MethodView):
    @charged_by_job
    @requires("operator")
    @blp.arguments(CommitSpecSchema)
    @blp.response(202, CommitJobSchema)
    def post(self, spec: dict, host: str, ref: str) -> Any:
        """`docker commit` [+ `docker push`] (job); result `{image_id, ref, pushed}`.

        With `push: {registry}` the new image is pushed to that stored registry (its address
        prefixed to a repository that names no registry) and `pushed` has the digest.
        """
        push_repository = None
        if spec["push"]:
            push_repository = resolve_in_registry(
                spec["repository"], stored_registry_address(spec["push"]["registry"]))
        # A container's filesystem may hold anything: it never passes as an allowed image.
        policy, is_admin = caller_policy(call())
        for name in filter(None, (spec["repository"], push_repository)):
            enforce_local_name(policy, name, False, is_admin, "commit")
        return start_job(CONTAINERS_COMMIT, host_record=host_record(host), target=ref,
                         args=[ref, spec, push_repository, caller_context()])
