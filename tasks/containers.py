"""Container jobs (provision, lifecycle, exec, rm, prune, …) and reads (ps, inspect, logs, top, …)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from app import jobs as jobstates
from app.engine import containers
from app.errors import ConflictError, PolicyViolationError
from app.policy import image_registry, policy_from_settings, registry_host
from app.registries import registry_address, require_reference_in_registry
from app.runtime import runtime
from tasks.base import JobContext, JobTask, engine_read

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


def enforce_policy_on_host(job: JobContext, spec: dict[str, Any], is_admin: bool) -> None:
    """The policy again, where the job runs; on a unix-socket host also through symlinks."""
    host = runtime().hosts.get(job.host)
    socket_path = host["url"].removeprefix("unix://") if host["url"].startswith("unix://") else None
    policy = policy_from_settings(runtime().settings, socket_path)
    policy.enforce(spec, is_admin)
    if socket_path:
        for volume in spec.get("volumes") or []:
            if volume["type"] == "bind":
                found = [v for v in policy.check_resolved_bind(volume["source"])
                         if not (is_admin and v.rule in policy.admin_exceptions)]
                if found:
                    raise PolicyViolationError(found[0].rule, found[0].detail)


@shared_task(bind=True, base=JobTask, name="containers.provision")
def provision(self: JobTask, job_id: str, host: str, spec: dict[str, Any], is_admin: bool) -> None:
    def operation(job: JobContext) -> dict[str, Any]:
        enforce_policy_on_host(job, spec, is_admin)
        return containers.provision_container(
            job.client, spec, job_id, auth=registry_auth(spec["image"], spec.get("registry")),
            progress=lambda done, total, unit, message: job.progress(
                done, total, unit, message, force=unit == "steps" or done == total),
            checkpoint=job.check_cancelled)

    self.run_job(job_id, host, operation)


_LIFECYCLE = {
    "start": lambda client, ref, args: containers.start_container(client, ref),
    "stop": lambda client, ref, args: containers.stop_container(client, ref, args.get("timeout")),
    "restart": lambda client, ref, args: containers.restart_container(client, ref, args.get("timeout")),
    "kill": lambda client, ref, args: containers.kill_container(client, ref, args.get("signal", "SIGKILL")),
    "pause": lambda client, ref, args: containers.pause_container(client, ref),
    "unpause": lambda client, ref, args: containers.unpause_container(client, ref),
}
LIFECYCLE_ACTIONS = tuple(_LIFECYCLE)


@shared_task(bind=True, base=JobTask, name="containers.action")
def action(self: JobTask, job_id: str, host: str, ref: str, verb: str, args: dict[str, Any]) -> None:
    self.run_job(job_id, host, lambda job: _LIFECYCLE[verb](job.client, ref, args))


@shared_task(bind=True, base=JobTask, name="containers.remove")
def remove(self: JobTask, job_id: str, host: str, ref: str, force: bool, volumes: bool) -> None:
    self.run_job(job_id, host,
                 lambda job: containers.remove_container(job.client, ref, force, volumes))


@shared_task(bind=True, base=JobTask, name="containers.exec")
def exec_(self: JobTask, job_id: str, host: str, ref: str, spec: dict[str, Any],
          is_admin: bool) -> None:
    # A command may not be idempotent, so a redelivered exec (its worker died mid-run) is
    # reported rather than run a second time.
    redelivered = runtime().jobs.get(job_id)["state"] == jobstates.RUNNING

    def operation(job: JobContext) -> dict[str, Any]:
        if redelivered:
            raise ConflictError("the worker running this exec was lost; the command is not run "
                                "twice, check the container before retrying")
        policy_from_settings(runtime().settings).enforce_exec(spec, is_admin)
        return containers.exec_in_container(job.client, ref, spec, marker=job_id,
                                            checkpoint=job.check_cancelled)

    self.run_job(job_id, host, operation)


@shared_task(bind=True, base=JobTask, name="containers.wait")
def wait(self: JobTask, job_id: str, host: str, ref: str, condition: str, timeout: float) -> None:
    self.run_job(job_id, host,
                 lambda job: containers.wait_container(job.client, ref, condition, timeout))


@shared_task(bind=True, base=JobTask, name="containers.rename")
def rename(self: JobTask, job_id: str, host: str, ref: str, name: str) -> None:
    self.run_job(job_id, host, lambda job: containers.rename_container(job.client, ref, name))


@shared_task(bind=True, base=JobTask, name="containers.update")
def update(self: JobTask, job_id: str, host: str, ref: str, changes: dict[str, Any]) -> None:
    self.run_job(job_id, host, lambda job: containers.update_container(job.client, ref, changes))


@shared_task(bind=True, base=JobTask, name="containers.prune")
def prune(self: JobTask, job_id: str, host: str, labels: list[str], until: str | None,
          managed_only: bool) -> None:
    self.run_job(job_id, host, lambda job: containers.prune_containers(
        job.client, labels, until, managed_only))


@shared_task(bind=True, base=JobTask, name="containers.remove_matching")
def remove_matching(self: JobTask, job_id: str, host: str, match: dict[str, Any], force: bool,
                    volumes: bool, managed_only: bool) -> None:
    self.run_job(job_id, host, lambda job: containers.remove_matching(
        job.client, match, force=force, volumes=volumes, managed_only=managed_only,
        checkpoint=job.check_cancelled))


# -- reads --------------------------------------------------------------------------------


list_ = engine_read("containers.list",
                    lambda client, args: containers.list_containers(client, **args))
inspect = engine_read("containers.inspect", containers.inspect_container)
exists = engine_read("containers.exists", containers.container_exists)
logs = engine_read("containers.logs",
                   lambda client, ref, args: containers.container_logs(client, ref, **args))
top = engine_read("containers.top", containers.container_top)
stats = engine_read("containers.stats", containers.container_stats)
changes = engine_read("containers.changes", containers.container_changes)
ports = engine_read("containers.ports", containers.container_ports)
check_running = engine_read(
    "containers.check_running",
    lambda client, ref, doing: containers.require_running(client, ref, doing)["Id"])


@shared_task(bind=True, base=JobTask, name="containers.commit")
def commit(self: JobTask, job_id: str, host: str, ref: str, spec: dict[str, Any],
           push_repository: str | None) -> None:
    """``docker commit`` and, when asked, ``docker push`` of the new image."""
    from app.engine import images
    from tasks.images import layer_progress  # tasks.images imports this module

    def operation(job: JobContext) -> dict[str, Any]:
        made = containers.commit_container(
            job.client, ref, spec["repository"], spec["tag"], message=spec["message"],
            author=spec["author"], changes=spec["changes"], pause=spec["pause"])
        made["pushed"] = None
        if push_repository:
            registry = spec["push"]["registry"]
            made["pushed"] = images.push_image(
                job.client, made["image_id"], push_repository, spec["tag"],
                registry_auth(push_repository, registry), layer_progress(job))
        return made

    self.run_job(job_id, host, operation)
