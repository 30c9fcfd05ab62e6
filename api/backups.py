"""/backups, /backup-schedules and a container's /backups: back up, browse, download, restore."""

from __future__ import annotations

from typing import Any

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import caller_context, principal, requires, start_job
from api.hosts import host_record
from app.backups import (
    BackupScheduleStore,
    default_image,
    parse_range,
    restore_spec,
    storage_for,
    validate_cron,
)
from app.dispatch import run_query
from app.errors import ConflictError, ForbiddenError, problem_from_http
from app.factory import problem_response
from app.policy import enforce_local_name, policy_from_settings
from app.runtime import runtime
from app.store import get_redis
from app.task_names import BACKUPS_CREATE, BACKUPS_RESTORE, CONTAINERS_EXISTS, CONTAINERS_INSPECT
from schemas.backups import (
    BackupJobSchema,
    BackupListArgsSchema,
    BackupSchema,
    BackupSpecSchema,
    RestoreJobSchema,
    RestoreSpecSchema,
    ScheduleSchema,
    ScheduleSpecSchema,
)

blp = Blueprint("backups", __name__, description="Backups: export, archive, restore, schedules")


def _storage():
    return storage_for(runtime().settings)


def _schedules() -> BackupScheduleStore:
    return BackupScheduleStore(get_redis())


def _visible_manifest(backup_id: str) -> dict[str, Any]:
    """The manifest, if the caller's token may see the host it came from (404 otherwise)."""
    manifest = _storage().manifest(backup_id)
    principal().require_host(manifest["host"])
    return manifest


def _owned_manifest(backup_id: str) -> dict[str, Any]:
    """The manifest, if the caller may also use the bundle's content (403 otherwise).

    A bundle holds the container's whole configuration and files: besides the host, a
    non-admin's scope must cover the scope of the container it was made from.
    """
    manifest = _visible_manifest(backup_id)
    caller = principal()
    if not caller.is_admin and not caller.within_scope(manifest.get("scope")):
        raise ForbiddenError(f"backup '{backup_id}' was made of a container outside the scope "
                             f"of token '{caller.name}'", rule="owner-scope")
    return manifest


def _with_links(manifest: dict[str, Any]) -> dict[str, Any]:
    base = f"/api/v1/backups/{manifest['id']}"
    return {**manifest, "links": {"self": base, "content": base + "/content",
                                  "restore": base + "/restore", "job": f"/api/v1/jobs/{manifest['id']}"}}


@blp.route("/hosts/<string:host>/containers/<string:ref>/backups")
class ContainerBackups(MethodView):
    @requires("operator")
    @blp.arguments(BackupSpecSchema)
    @blp.response(202, BackupJobSchema)
    def post(self, spec: dict, host: str, ref: str) -> Any:
        """`docker export` + `docker cp` of each volume: back a container up into a bundle (job).

        The bundle's id is the job's id; the result is its manifest.
        """
        record = host_record(host)
        return start_job(BACKUPS_CREATE, host_record=record, target=ref,
                         args=[ref, spec, caller_context()],
                         precheck=lambda: run_query(CONTAINERS_INSPECT, record,
                                                    [caller_context(), ref]))


@blp.route("/backups")
class Backups(MethodView):
    @requires("viewer")
    @blp.arguments(BackupListArgsSchema, location="query")
    @blp.response(200, BackupSchema(many=True))
    def get(self, args: dict) -> list[dict]:
        """The catalog: every complete bundle, newest first."""
        caller = principal()
        found = []
        for manifest in _storage().catalog():
            if not caller.may_see_host(manifest["host"]):
                continue
            if args.get("host") and manifest["host"] != args["host"]:
                continue
            container = args.get("container")
            if container and container not in (manifest["container"]["name"],
                                               manifest["container"]["id"]):
                continue
            found.append(_with_links(manifest))
        return found


@blp.route("/backups/<string:backup_id>")
class Backup(MethodView):
    @requires("viewer")
    @blp.response(200, BackupSchema)
    def get(self, backup_id: str) -> dict:
        """A bundle's manifest: container, image, parts with size and sha256, options."""
        return _with_links(_visible_manifest(backup_id))

    @requires("operator")
    @blp.response(204)
    def delete(self, backup_id: str) -> None:
        """Delete a bundle from storage."""
        _owned_manifest(backup_id)
        _storage().delete(backup_id)


@blp.route("/backups/<string:backup_id>/content")
class BackupContent(MethodView):
    @requires("operator")
    @blp.response(200, description="application/x-tar: the bundle (manifest first, then every "
                                   "part); `Range: bytes=…` answers 206")
    @blp.alt_response(206, description="the byte range asked for (`Content-Range`)", success=True)
    def get(self, backup_id: str) -> Response:
        """Download a bundle as one tar stream, streamed from storage; `Range` supported.

        Operators and admins only: the bundle holds the container's environment and files.
        """
        _owned_manifest(backup_id)
        archive = _storage().archive(backup_id)
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{archive.etag}"',
                   "Content-Disposition": f'attachment; filename="dockyard-backup-{backup_id}.tar"'}
        wanted = parse_range(request.headers.get("Range"), archive.size)
        if wanted is False:
            response = problem_response(problem_from_http(
                416, "Range Not Satisfiable",
                f"the bundle is {archive.size} bytes; the range asked for lies beyond it"))
            response.headers.update({**headers, "Content-Range": f"bytes */{archive.size}"})
            return response
        start, end = wanted if wanted else (0, archive.size - 1)
        if wanted:
            headers["Content-Range"] = f"bytes {start}-{end}/{archive.size}"
        headers["Content-Length"] = str(end - start + 1)
        return Response(archive.read(start, end), status=206 if wanted else 200,
                        mimetype="application/x-tar", headers=headers, direct_passthrough=True)


@blp.route("/backups/<string:backup_id>/restore")
class BackupRestore(MethodView):
    @requires("operator")
    @blp.arguments(RestoreSpecSchema)
    @blp.response(202, RestoreJobSchema)
    def post(self, body: dict, backup_id: str) -> Any:
        """`docker import` + `docker run`: recreate the container from a bundle (job).

        The checksums are verified first; volumes are recreated and loaded; the container gets
        its saved ports (with `overrides.ports`), mounts, labels and restart policy. The policy
        is applied to the restored spec here and again on the worker.
        """
        manifest = _owned_manifest(backup_id)
        target = body["host"] or manifest["host"]
        caller = principal()
        caller.require_host(target)
        record = host_record(target)
        config = _storage().container_config(backup_id)
        spec = restore_spec(manifest, config, body, default_image(manifest, body["image_repository"]))
        is_admin = caller.role == "admin"
        policy = policy_from_settings(runtime().settings)
        # The bundle's filesystem is imported under spec["image"]: it never passes as an
        # image of an allowed registry.
        enforce_local_name(policy, spec["image"], False, is_admin, "restore")
        policy.enforce(spec, is_admin)

        def name_is_free() -> None:
            if not spec["replace"] and run_query(CONTAINERS_EXISTS, record, [spec["name"]]):
                raise ConflictError(f"container name '{spec['name']}' is already in use on host "
                                    f"'{target}'; pass replace: true to replace it or pick "
                                    "another name", name=spec["name"])

        return start_job(BACKUPS_RESTORE, host_record=record, target=spec["name"],
                         args=[backup_id, spec, caller_context()], precheck=name_is_free)


@blp.route("/backup-schedules")
class BackupSchedules(MethodView):
    @requires("operator")
    @blp.response(200, ScheduleSchema(many=True))
    def get(self) -> list[dict]:
        """Backup schedules (run by beat; cron in UTC)."""
        caller = principal()
        return [s for s in _schedules().list() if caller.may_see_host(s["host"])]

    @requires("operator")
    @blp.arguments(ScheduleSpecSchema)
    @blp.response(201, ScheduleSchema)
    def post(self, spec: dict) -> dict:
        """Back a container up on a cron schedule, keeping the newest `keep` bundles."""
        validate_cron(spec["cron"])
        principal().require_host(spec["host"])
        host_record(spec["host"])
        # Scheduled backups run with the creator's role and scope.
        return _schedules().create({**spec, "caller": caller_context()}, principal().name)


@blp.route("/backup-schedules/<string:schedule_id>")
class BackupSchedule(MethodView):
    @requires("operator")
    @blp.response(200, ScheduleSchema)
    def get(self, schedule_id: str) -> dict:
        """One backup schedule."""
        schedule = _schedules().get(schedule_id)
        principal().require_host(schedule["host"])
        return schedule

    @requires("operator")
    @blp.response(204)
    def delete(self, schedule_id: str) -> None:
        """Stop a schedule (its bundles stay until deleted)."""
        schedule = _schedules().get(schedule_id)
        principal().require_host(schedule["host"])
        _schedules().delete(schedule_id)
