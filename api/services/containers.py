"""Container operations shared by views and chat: ps, run -d, rm, lifecycle verbs, logs."""

from __future__ import annotations

from typing import Any

from api.services import Call, host_record, operation, parse_wait, start_job
from api.services.images import check_registry_credentials
from app.core.errors import ConflictError, ForbiddenError
from app.core.task_names import (
    CONTAINERS_ACTION,
    CONTAINERS_EXISTS,
    CONTAINERS_LIST,
    CONTAINERS_LOGS,
    CONTAINERS_PROVISION,
    CONTAINERS_REMOVE,
)
from app.jobs.dispatch import run_query
from app.runtime import runtime
from app.security.policy import policy_from_settings


def check_spec_policy(call: Call, spec: dict[str, Any]) -> None:
    """Refuse a spec the policy forbids before anything is queued (403 naming the rule)."""
    policy_from_settings(runtime().settings).enforce(spec, call.is_admin)


def require_admin_for_unmanaged(call: Call, managed_only: bool) -> None:
    """Only admins may touch containers Dockyard did not make (``managed_only=false``)."""
    if not managed_only and not call.is_admin:
        raise ForbiddenError("only admins may act on containers not labelled "
                             "dockyard.managed=true (managed_only=false)")


@operation("viewer")
def list_containers(call: Call, *, host: str, args: dict[str, Any]) -> list[dict]:
    """`docker ps [-a] [-n N] [-l]` with filters; one engine call."""
    query = {"all": args["all"], "limit": args["limit"], "latest": args["latest"],
             "name": args.get("name"), "labels": args["label"] or None,
             "status": args.get("status"), "ancestor": args.get("ancestor")}
    return call.redacted("summary", run_query(CONTAINERS_LIST, host_record(host), [query]))


@operation("operator")
def provision(call: Call, *, host: str, spec: dict[str, Any]) -> tuple[dict, int, dict]:
    """`docker run -d` (job): policy and registry checked, the name free unless ``replace``."""
    record = host_record(host)
    check_spec_policy(call, spec)
    check_registry_credentials(spec["image"], spec.get("registry"))

    def name_taken(**extra: Any) -> ConflictError:
        return ConflictError(f"container name '{spec['name']}' is already in use on host "
                             f"'{host}'; pass replace: true to replace it",
                             name=spec["name"], **extra)

    def name_is_free() -> None:
        if run_query(CONTAINERS_EXISTS, record, [spec["name"]]):
            raise name_taken()

    named = bool(spec["name"]) and not spec["replace"]
    # With ?wait the worker's create is the name check (no query-lane round trip here): a
    # taken name fails the job with 409, answered as this 409 naming the failed job.
    # Without ?wait the caller would only learn it from the job, so it is checked now.
    checked_by_worker = parse_wait(call.wait) > 0
    answer = start_job(call, CONTAINERS_PROVISION, host_record=record,
                       target=spec["name"] or spec["image"], args=[spec, call.caller()],
                       precheck=name_is_free if named and not checked_by_worker else None)
    view = answer[0]
    error = view.get("error") or {}
    if named and checked_by_worker and view["state"] == "failed" and \
            error.get("status") == 409 and error.get("name") == spec["name"]:
        raise name_taken(job=view["id"])
    return answer


@operation("operator")
def remove(call: Call, *, host: str, ref: str, args: dict[str, Any]) -> tuple[dict, int, dict]:
    """`docker rm [-f] [-v]` (job)."""
    return start_job(call, CONTAINERS_REMOVE, host_record=host_record(host), target=ref,
                     args=[ref, args["force"], args["volumes"], call.caller()])


@operation("operator")
def lifecycle(call: Call, *, host: str, ref: str, verb: str,
              args: dict[str, Any]) -> tuple[dict, int, dict]:
    """`docker start|stop|restart|kill|pause|unpause` (job)."""
    return start_job(call, CONTAINERS_ACTION, host_record=host_record(host), target=ref,
                     args=[ref, verb, args, call.caller()],
                     body=call.body or {})


@operation("viewer")
def logs(call: Call, *, host: str, ref: str, args: dict[str, Any]) -> str:
    """`docker logs [--tail N] [--since] [--until] [-t]` as text (not following)."""
    return run_query(CONTAINERS_LOGS, host_record(host),
                     [call.caller(), ref, {"tail": args["tail"], "since": args["since"],
                                           "until": args["until"],
                                           "timestamps": args["timestamps"]}])
