"""Container jobs (provision, lifecycle, exec, rm, prune, …) and reads (ps, inspect, logs, top, …)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import docker
from celery import Task, shared_task

from app.core.errors import ConflictError, DockyardError
from app.core.task_names import (
    CONTAINERS_ACTION,
    CONTAINERS_CHANGES,
    CONTAINERS_CHECK_ACCESS,
    CONTAINERS_CHECK_RUNNING,
    CONTAINERS_COMMIT,
    CONTAINERS_EXEC,
    CONTAINERS_EXISTS,
    CONTAINERS_INSPECT,
    CONTAINERS_LIST,
    CONTAINERS_LOGS,
    CONTAINERS_PORTS,
    CONTAINERS_PROVISION,
    CONTAINERS_PRUNE,
    CONTAINERS_REMOVE,
    CONTAINERS_REMOVE_MATCHING,
    CONTAINERS_RENAME,
    CONTAINERS_STATS,
    CONTAINERS_TOP,
    CONTAINERS_UPDATE,
    CONTAINERS_WAIT,
)
from app.engine import containers, execs, guard, observe
from app.engine import provision as provisioning
from app.jobs import records as jobstates
from app.registry.registries import registry_address, require_reference_in_registry
from app.runtime import runtime
from app.security.auth import Principal
from app.security.policy import Policy, image_registry, policy_from_settings, registry_host
from tasks.base import JobContext, JobTask, QueryTask, engine_read, layer_progress

# -- jobs ---------------------------------------------------------------------------------


def registry_auth(image: str, registry_name: str | None) -> dict[str, str] | None:
    """Credentials for pulling or pushing ``image``: the named registry's, or the one whose
    address matches.

    Raises:
        InvalidInputError: the named registry is not where ``image`` lives (422 on field
            ``registry``): stored credentials are only ever offered to their own registry.
    """
    store = runtime().registries
    if registry_name:
        record = store.get(registry_name)
        require_reference_in_registry(image, record)
        return store.auth_config(record)
    domain = registry_host(image_registry(image))
    for record in store.list():
        if registry_host(registry_address(record["url"])) == domain:
            return store.auth_config(record)
    return None


_policies: dict[tuple[str, int], Policy] = {}


def host_policy(host: str, revision: int | None = None,
                record: dict[str, Any] | None = None) -> Policy:
    """The policy as it applies on ``host`` (its own engine socket is never mountable).

    With the host record's ``revision`` (reads carry it) the policy is kept per revision, so
    a read costs no extra Redis round trip; a changed record has a new revision. ``record``
    is the host's record when the caller has just read it.
    """
    if revision is not None and (host, revision) in _policies:
        return _policies[(host, revision)]
    record = record or runtime().hosts.get(host)
    socket_path = record["url"].removeprefix("unix://") if record["url"].startswith("unix://") \
        else None
    policy = policy_from_settings(runtime().settings, socket_path)
    if revision is not None:
        if len(_policies) > 1000:
            _policies.clear()
        _policies[(host, revision)] = policy
    return policy


def accessible(client: docker.DockerClient, host: str, caller: dict[str, Any], ref: str,
               action: str, revision: int | None = None) -> dict[str, Any]:
    """The container's inspect, once ``caller`` is found allowed to ``action`` it on ``host``
    (``guard.require_access``): the one check every container job, read and stream makes."""
    return guard.require_access(client, ref, Principal.from_caller(caller), action,
                                host_policy(host, revision))


def enforce_policy_on_host(job: JobContext, spec: dict[str, Any], caller: Principal) -> Policy:
    """The policy again, where the job runs, on the spec's text; answers the host's policy.

    What the spec refers to on the engine is judged inside the provision itself
    (``app.engine.guard``), right before the create.
    """
    policy = host_policy(job.host, record=job.host_record)
    policy.enforce(spec, caller.is_admin)
    return policy


def guarded(job: JobContext, ref: str, caller: dict[str, Any], action: str) -> str:
    """The container's id, once ``caller`` is found allowed to ``action`` it (see guard)."""
    return accessible(job.client, job.host, caller, ref, action)["Id"]


@shared_task(bind=True, base=JobTask, name=CONTAINERS_PROVISION)
def provision(self: JobTask, job_id: str, host: str, spec: dict[str, Any],
              caller: dict[str, Any]) -> None:
    def operation(job: JobContext) -> dict[str, Any]:
        principal = Principal.from_caller(caller)
        policy = enforce_policy_on_host(job, spec, principal)
        return provisioning.provision_container(
            job.client, spec, job_id, caller=principal, policy=policy,
            # A named registry is checked now; the one matching the image's address is
            # looked up only if the image is pulled.
            auth=registry_auth(spec["image"], spec["registry"]) if spec.get("registry")
            else lambda: registry_auth(spec["image"], None),
            # A step is written with the next checkpoint's cancel check (each step is
            # followed by one, or by the job's end); a pull's layers as they come.
            progress=lambda done, total, unit, message: job.progress(
                done, total, unit, message, force=unit == "steps" or done == total,
                defer=unit == "steps"),
            checkpoint=job.check_cancelled, redelivered=job.redelivered)

    self.run_job(job_id, host, operation)


_LIFECYCLE = {
    "start": lambda client, ref, args: containers.start_container(client, ref),
    "stop": lambda client, ref, args: containers.stop_container(client, ref, args.get("timeout")),
    "restart": lambda client, ref, args: containers.restart_container(client, ref, args.get("timeout")),
    "kill": lambda client, ref, args: containers.kill_container(client, ref, args.get("signal", "SIGKILL")),
    "pause": lambda client, ref, args: containers.pause_container(client, ref),
    "unpause": lambda client, ref, args: containers.unpause_container(client, ref),
}


@shared_task(bind=True, base=JobTask, name=CONTAINERS_ACTION)
def action(self: JobTask, job_id: str, host: str, ref: str, verb: str, args: dict[str, Any],
           caller: dict[str, Any]) -> None:
    self.run_job(job_id, host, lambda job: _LIFECYCLE[verb](
        job.client, guarded(job, ref, caller, verb), args))


@shared_task(bind=True, base=JobTask, name=CONTAINERS_REMOVE)
def remove(self: JobTask, job_id: str, host: str, ref: str, force: bool, volumes: bool,
           caller: dict[str, Any]) -> None:
    self.run_job(job_id, host, lambda job: containers.remove_container(
        job.client, guarded(job, ref, caller, "remove"), force, volumes))


@shared_task(bind=True, base=JobTask, name=CONTAINERS_EXEC)
def exec_(self: JobTask, job_id: str, host: str, ref: str, spec: dict[str, Any],
          caller: dict[str, Any]) -> None:
    # A command may not be idempotent, so a redelivered exec (its worker died mid-run) is
    # reported rather than run a second time.
    redelivered = runtime().jobs.get(job_id)["state"] == jobstates.RUNNING

    def operation(job: JobContext) -> dict[str, Any]:
        if redelivered:
            raise ConflictError("the worker running this exec was lost; the command is not run "
                                "twice, check the container before retrying")
        policy_from_settings(runtime().settings).enforce_exec(spec, caller["role"] == "admin")
        return execs.exec_in_container(job.client, guarded(job, ref, caller, "exec"), spec,
                                            marker=job_id, checkpoint=job.check_cancelled)

    self.run_job(job_id, host, operation)


@shared_task(bind=True, base=JobTask, name=CONTAINERS_WAIT)
def wait(self: JobTask, job_id: str, host: str, ref: str, condition: str, timeout: float,
         caller: dict[str, Any]) -> None:
    self.run_job(job_id, host, lambda job: containers.wait_container(
        job.client, guarded(job, ref, caller, "wait"), condition, timeout))


@shared_task(bind=True, base=JobTask, name=CONTAINERS_RENAME)
def rename(self: JobTask, job_id: str, host: str, ref: str, name: str,
           caller: dict[str, Any]) -> None:
    self.run_job(job_id, host, lambda job: containers.rename_container(
        job.client, guarded(job, ref, caller, "rename"), name))


@shared_task(bind=True, base=JobTask, name=CONTAINERS_UPDATE)
def update(self: JobTask, job_id: str, host: str, ref: str, changes: dict[str, Any],
           caller: dict[str, Any]) -> None:
    self.run_job(job_id, host, lambda job: containers.update_container(
        job.client, guarded(job, ref, caller, "update"), changes))


def _removable_by(job: JobContext, caller: dict[str, Any]):
    """A predicate: may ``caller`` remove this container (by id)? With the reason if not."""
    def check(container_id: str) -> str | None:
        try:
            guarded(job, container_id, caller, "remove")
        except DockyardError as exc:
            return exc.detail
        return None

    return check


@shared_task(bind=True, base=JobTask, name=CONTAINERS_PRUNE)
def prune(self: JobTask, job_id: str, host: str, labels: list[str], until: str | None,
          managed_only: bool, caller: dict[str, Any]) -> None:
    def operation(job: JobContext) -> dict[str, Any]:
        if caller["role"] == "admin":
            return containers.prune_containers(job.client, labels, until, managed_only)
        # The engine's prune knows no owners: a non-admin's prune removes, one by one, the
        # stopped containers it may remove.
        return containers.prune_one_by_one(job.client, labels, until,
                                           _removable_by(job, caller), job.check_cancelled)

    self.run_job(job_id, host, operation)


@shared_task(bind=True, base=JobTask, name=CONTAINERS_REMOVE_MATCHING)
def remove_matching(self: JobTask, job_id: str, host: str, match: dict[str, Any], force: bool,
                    volumes: bool, managed_only: bool, caller: dict[str, Any]) -> None:
    self.run_job(job_id, host, lambda job: containers.remove_matching(
        job.client, match, force=force, volumes=volumes, managed_only=managed_only,
        checkpoint=job.check_cancelled,
        removable=None if caller["role"] == "admin" else _removable_by(job, caller)))


# -- reads --------------------------------------------------------------------------------


def container_read(name: str, action: str, read: Callable[..., Any]) -> Task:
    """Register a read of one container: ``read(client, inspect, *args)`` answers the caller.

    The API sends ``(reply_id, host, revision, caller, ref, *args)``; the container is
    inspected once and the caller's access to it checked (``guard.require_access``) first.
    """
    def run(self: QueryTask, reply_id: str, host: str, revision: int, caller: dict[str, Any],
            ref: str, *args: Any) -> None:
        def answer(client: docker.DockerClient) -> Any:
            return read(client, accessible(client, host, caller, ref, action, revision), *args)

        self.reply(reply_id, host, revision, answer)

    run.__name__ = run.__qualname__ = name.replace(".", "_")
    return shared_task(bind=True, base=QueryTask, name=name)(run)


list_ = engine_read(CONTAINERS_LIST,
                    lambda client, args: containers.list_containers(client, **args))
exists = engine_read(CONTAINERS_EXISTS, containers.container_exists)
inspect = container_read(CONTAINERS_INSPECT, "inspect", lambda client, info: info)
logs = container_read(CONTAINERS_LOGS, "logs", lambda client, info, args:
                      containers.container_logs(client, info["Id"], **args))
top = container_read(CONTAINERS_TOP, "top", lambda client, info, ps_args:
                     observe.container_top(client, info["Id"], ps_args))
stats = container_read(CONTAINERS_STATS, "stats",
                       lambda client, info: observe.container_stats(client, info["Id"]))
changes = container_read(CONTAINERS_CHANGES, "changes",
                         lambda client, info: observe.container_changes(client, info["Id"]))
ports = container_read(CONTAINERS_PORTS, "port",
                       lambda client, info: observe.container_ports(client, info["Id"]))
# A precheck before an upload is spooled: may the caller do ``action`` to the container?
check_access = engine_read(
    CONTAINERS_CHECK_ACCESS,
    lambda client, caller, ref, action, host: accessible(client, host, caller, ref, action)["Id"])
check_running = container_read(
    CONTAINERS_CHECK_RUNNING, "exec",
    lambda client, info, doing: containers.require_running(client, info["Id"], doing)["Id"])


@shared_task(bind=True, base=JobTask, name=CONTAINERS_COMMIT)
def commit(self: JobTask, job_id: str, host: str, ref: str, spec: dict[str, Any],
           push_repository: str | None, caller: dict[str, Any]) -> None:
    """``docker commit`` and, when asked, ``docker push`` of the new image."""
    from app.engine import images

    def operation(job: JobContext) -> dict[str, Any]:
        made = containers.commit_container(
            job.client, guarded(job, ref, caller, "commit"), spec["repository"], spec["tag"],
            message=spec["message"], author=spec["author"], changes=spec["changes"], pause=spec["pause"])
        made["pushed"] = None
        if push_repository:
            registry = spec["push"]["registry"]
            made["pushed"] = images.push_image(
                job.client, made["image_id"], push_repository, spec["tag"],
                registry_auth(push_repository, registry), layer_progress(job))
        return made

    self.run_job(job_id, host, operation)
