"""/backups, /backup-schedules and a container's /backups: back up, browse, download, restore."""

from __future__ import annotations

from typing import Any

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import call, caller_context, charged_by_job, host_record, principal, requires
from api.services import backups as service
from app.backups.download import digest_headers, none_match, parse_range
from app.backups.schedules import BackupScheduleStore, validate_cron
from app.core.errors import problem_from_http
from app.core.store import get_redis
from app.factory import problem_response
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
    return service.storage()


def _schedules() -> BackupScheduleStore:
    return BackupScheduleStore(get_redis())


def _visible_manifest(backup_id: str) -> dict[str, Any]:
    return service.visible_manifest(call(), backup_id)


def _owned_manifest(backup_id: str) -> dict[str, Any]:
    return service.owned_manifest(call(), backup_id)


def _with_links(manifest: dict[str, Any]) -> dict[str, Any]:
    base = f"/api/v1/backups/{manifest['id']}"
    return {**manifest, "links": {"self": base, "content": base + "/content",
                                  "restore": base + "/restore", "job": f"/api/v1/jobs/{manifest['id']}"}}


@blp.route("/hosts/<string:host>/containers/<string:ref>/backups")
class ContainerBackups(MethodView):
    @charged_by_job
    @requires("operator")
    @blp.arguments(BackupSpecSchema)
    @blp.response(202, BackupJobSchema)
    def post(self, spec: dict, host: str, ref: str) -> Any:
        """`docker export` + `docker cp` of each volume: back a container up into a bundle (job).

        The bundle's id is the job's id; the result is its manifest.
        """
        return service.create(call(), host=host, ref=ref, spec=spec)


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
    @blp.alt_response(304, description="`If-None-Match` names the ETag: the client has these "
                                       "bytes", success=True)
    def get(self, backup_id: str) -> Response:
        """Download a bundle as one tar stream, streamed from storage; `Range` supported.

        The ETag is strong (the download's sha256 once recorded); `Repr-Digest:
        sha-256=:<base64>:` (RFC 9530) and the legacy `Digest: sha-256=<base64>` carry the
        sha256 of the whole download (also on a 206), equal to the record's `content_sha256`;
        `If-None-Match` with the ETag answers 304.

        Operators and admins only: the bundle holds the container's environment and files.
        """
        _owned_manifest(backup_id)
        archive = _storage().archive(backup_id)
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{archive.etag}"',
                   "Content-Disposition": f'attachment; filename="dockyard-backup-{backup_id}.tar"'}
        if archive.sha256:
            headers.update(digest_headers(archive.sha256))
        if none_match(request.headers.get("If-None-Match"), archive.etag):
            return Response(status=304, headers=headers)
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
    @charged_by_job
    @requires("operator")
    @blp.arguments(RestoreSpecSchema)
    @blp.response(202, RestoreJobSchema)
    def post(self, body: dict, backup_id: str) -> Any:
        """`docker import` + `docker run`: recreate the container from a bundle (job).

        The checksums are verified first; volumes are recreated and loaded; the container gets
        its saved ports (with `overrides.ports`), mounts, labels and restart policy. The policy
        is applied to the restored spec here and again on the worker.
        """
        return service.restore(call(), backup_id=backup_id, body=body)


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
