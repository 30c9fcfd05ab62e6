"""/hosts/{host}/containers: provision (docker run -d), ps, inspect, lifecycle, rm, logs."""

from __future__ import annotations

from typing import Any

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import ValidationError

from api.common import principal, requires, start_job
from api.hosts import host_record
from app.dispatch import run_query
from app.errors import ConflictError, InvalidInputError
from app.policy import policy_from_settings
from app.runtime import runtime
from schemas.common import JobSchema
from schemas.containers import (
    ContainerListArgsSchema,
    ContainerSummarySchema,
    KillArgsSchema,
    LogsArgsSchema,
    ProvisionSpecSchema,
    RemoveArgsSchema,
    StopArgsSchema,
)

blp = Blueprint("containers", __name__, description="Containers on a host")

_ACTION_SCHEMAS = {"start": None, "stop": StopArgsSchema, "restart": StopArgsSchema,
                   "kill": KillArgsSchema, "pause": None, "unpause": None}


def check_spec_policy(spec: dict[str, Any]) -> None:
    """Refuse a spec the policy forbids before anything is queued (403 naming the rule)."""
    policy_from_settings(runtime().settings).enforce(spec, principal().role == "admin")


@blp.route("/hosts/<string:host>/containers")
class Containers(MethodView):
    @requires("viewer")
    @blp.arguments(ContainerListArgsSchema, location="query")
    @blp.response(200, ContainerSummarySchema(many=True))
    def get(self, args: dict, host: str) -> list[dict]:
        """`docker ps [-a] [-n N] [-l]` with filters; one engine call."""
        query = {"all": args["all"], "limit": args["limit"], "latest": args["latest"],
                 "name": args.get("name"), "labels": args["label"] or None,
                 "status": args.get("status"), "ancestor": args.get("ancestor")}
        return run_query("containers.list", host_record(host), [query])

    @requires("operator")
    @blp.arguments(ProvisionSpecSchema)
    @blp.response(202, JobSchema)
    def post(self, spec: dict, host: str) -> Any:
        """`docker run -d`: provision a container (job)."""
        record = host_record(host)
        check_spec_policy(spec)

        def name_is_free() -> None:
            if spec["name"] and not spec["replace"] and \
                    run_query("containers.exists", record, [spec["name"]]):
                raise ConflictError(f"container name '{spec['name']}' is already in use on host "
                                    f"'{host}'; pass replace: true to replace it",
                                    name=spec["name"])

        return start_job("containers.provision", host_record=record,
                         target=spec["name"] or spec["image"],
                         args=[spec, principal().role == "admin"], precheck=name_is_free)


@blp.route("/hosts/<string:host>/containers/<string:ref>")
class Container(MethodView):
    @requires("viewer")
    @blp.response(200, description="the engine's `docker inspect` document")
    def get(self, host: str, ref: str) -> dict:
        """`docker inspect`: by id, unique id prefix or name."""
        return run_query("containers.inspect", host_record(host), [ref])

    @requires("operator")
    @blp.arguments(RemoveArgsSchema, location="query")
    @blp.response(202, JobSchema)
    def delete(self, args: dict, host: str, ref: str) -> Any:
        """`docker rm [-f] [-v]` (job)."""
        return start_job("containers.remove", host_record=host_record(host), target=ref,
                         args=[ref, args["force"], args["volumes"]])


@blp.route("/hosts/<string:host>/containers/<string:ref>/<any(start,stop,restart,kill,pause,unpause):verb>")
class ContainerAction(MethodView):
    @requires("operator")
    @blp.response(202, JobSchema)
    def post(self, host: str, ref: str, verb: str) -> Any:
        """`docker start|stop|restart|kill|pause|unpause` (job); `{timeout}` or `{signal}`."""
        schema = _ACTION_SCHEMAS[verb]
        body = request.get_json(silent=True) if request.content_length else {}
        if body is None or not isinstance(body, dict):
            raise InvalidInputError("the body must be a JSON object")
        if schema is None and body:
            raise InvalidInputError(f"{verb} takes no arguments",
                                    errors={k: ["Unknown field."] for k in body})
        try:
            args = schema().load(body) if schema else {}
        except ValidationError as exc:
            raise InvalidInputError("the request has invalid fields", errors=exc.messages) from None
        return start_job("containers.action", host_record=host_record(host), target=ref,
                         args=[ref, verb, args], body=body)


@blp.route("/hosts/<string:host>/containers/<string:ref>/logs")
class ContainerLogs(MethodView):
    @requires("viewer")
    @blp.arguments(LogsArgsSchema, location="query")
    @blp.response(200, description="text/plain: stdout and stderr, as `docker logs` prints them")
    def get(self, args: dict, host: str, ref: str) -> Response:
        """`docker logs [--tail N] [--since] [--until] [-t]`."""
        if args["follow"]:
            raise InvalidInputError("follow=true is not supported yet",
                                    errors={"follow": ["not supported yet"]})
        text = run_query("containers.logs", host_record(host),
                         [ref, {"tail": args["tail"], "since": args["since"],
                                "until": args["until"], "timestamps": args["timestamps"]}])
        return Response(text, mimetype="text/plain")
