"""Tar transfers and follow streams: ``docker cp``, ``save``, ``load``, ``import``, ``events``."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Response, request, stream_with_context
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from api.common import (
    accepts,
    call,
    caller_context,
    host_record,
    redacted,
    requires,
    sse_response,
    start_job,
)
from api.services.images import caller_policy
from app.core.task_names import (
    CONTAINERS_CHECK_ACCESS,
    TRANSFERS_ARCHIVE_IN,
    TRANSFERS_ARCHIVE_OUT,
    TRANSFERS_FOLLOW_EVENTS,
    TRANSFERS_IMPORT,
    TRANSFERS_LOAD,
    TRANSFERS_SAVE,
)
from app.jobs.dispatch import open_stream, run_query
from app.jobs.pipes import PipeReader
from app.jobs.spool import require_tar, saved_image_names, spool_dir, spool_upload
from app.runtime import runtime
from app.security.policy import enforce_local_name
from schemas.transfers import (
    ArchiveInJobSchema,
    ArchivePathSchema,
    EventStreamArgsSchema,
    ImportArgsSchema,
    ImportJobSchema,
    LoadJobSchema,
    SaveArgsSchema,
)

blp = Blueprint("transfers", __name__, description="Tar transfers and live streams")

TAR_TYPES = ("application/x-tar", "application/octet-stream", "application/gzip")


def spooled_tar() -> Path:
    """Spool the request body (a tar) to shared disk and return its path.

    Hand the path to ``start_job(spool=…)``, which deletes it if the job is refused.
    """
    request.max_content_length = runtime().settings.max_upload_bytes
    path = spool_upload(request.stream, spool_dir(runtime().settings.state_dir),
                        runtime().settings.max_upload_bytes)
    require_tar(path)
    return path


def check_loaded_names(spool: str) -> None:
    """403 ``allowed-registries`` if a ``docker save`` tar names an image in an allowed
    registry's namespace (``manifest.json`` RepoTags, ``repositories``, OCI ``index.json``)."""
    policy, is_admin = caller_policy(call())
    if not policy.allowed_registries:
        return
    for name in saved_image_names(Path(spool)):
        enforce_local_name(policy, name, False, is_admin, "load")


def relay(reader: PipeReader) -> Iterator[bytes]:
    yield from reader.chunks()


def redacted_json_line(line: str) -> str:
    """A JSON event line as the caller may see it (labels redacted for viewers)."""
    try:
        return json.dumps(redacted("event", json.loads(line)))
    except ValueError:
        return line


@blp.route("/hosts/<string:host>/containers/<string:ref>/archive")
class ContainerArchive(MethodView):
    @requires("operator")
    @blp.arguments(ArchivePathSchema, location="query")
    @blp.response(200, description="application/x-tar stream of the path")
    def get(self, args: dict, host: str, ref: str) -> Response:
        """`docker cp CONTAINER:PATH -`: download a path as a tar stream.

        Operators and admins only: a container's files hold what its environment holds.
        """
        meta, reader = open_stream(TRANSFERS_ARCHIVE_OUT, host_record(host),
                                   [caller_context(), ref, args["path"]])
        stat = base64.b64encode(json.dumps(meta["stat"]).encode()).decode()
        return Response(stream_with_context(relay(reader)), mimetype="application/x-tar",
                        headers={"X-Docker-Container-Path-Stat": stat})

    @requires("operator")
    @accepts(*TAR_TYPES)
    @blp.arguments(ArchivePathSchema, location="query")
    @blp.response(202, ArchiveInJobSchema)
    def put(self, args: dict, host: str, ref: str) -> Any:
        """`docker cp - CONTAINER:PATH`: extract an uploaded tar into the container (job)."""
        record = host_record(host)
        # Refused before a byte of the upload is spooled.
        run_query(CONTAINERS_CHECK_ACCESS, record, [caller_context(), ref, "archive", host])
        spool = spooled_tar()
        return start_job(TRANSFERS_ARCHIVE_IN, host_record=record, target=ref,
                         args=[ref, args["path"], str(spool), caller_context()],
                         body={"path": args["path"]}, spool=spool)


@blp.route("/hosts/<string:host>/images/save")
class ImageSave(MethodView):
    # Operators and admins: an image holds files (a committed container's included).
    @requires("operator")
    @blp.arguments(SaveArgsSchema, location="query")
    @blp.response(200, description="application/x-tar stream (`docker save` format)")
    def get(self, args: dict, host: str) -> Response:
        """`docker save REF...`: download one or more images as a tar stream (operator)."""
        _meta, reader = open_stream(TRANSFERS_SAVE, host_record(host), [args["ref"]])
        return Response(stream_with_context(relay(reader)), mimetype="application/x-tar")


@blp.route("/hosts/<string:host>/images/load")
class ImageLoad(MethodView):
    @requires("operator")
    @accepts(*TAR_TYPES)
    @blp.response(202, LoadJobSchema)
    def post(self, host: str) -> Any:
        """`docker load`: load images from an uploaded `docker save` tar (job).

        With an allow-list of registries, a tar naming an image in an allowed registry's
        namespace is refused (403 `allowed-registries`): a loaded image is of unknown origin.
        """
        record = host_record(host)
        spool = spooled_tar()
        try:
            check_loaded_names(str(spool))
        except BaseException:
            Path(spool).unlink(missing_ok=True)
            raise
        return start_job(TRANSFERS_LOAD, host_record=record, target=None,
                         args=[str(spool)], body={}, spool=spool)


@blp.route("/hosts/<string:host>/images/import")
class ImageImport(MethodView):
    @requires("operator")
    @accepts(*TAR_TYPES)
    @blp.arguments(ImportArgsSchema, location="query", unknown=RAISE)
    @blp.response(202, ImportJobSchema)
    def post(self, args: dict, host: str) -> Any:
        """`docker import - [REPO[:TAG]] --change …`: a filesystem tar becomes an image (job)."""
        record = host_record(host)
        args.pop("wait")
        if args["repository"]:
            policy, is_admin = caller_policy(call())
            enforce_local_name(policy, args["repository"], False, is_admin, "import")
        spool = spooled_tar()
        return start_job(TRANSFERS_IMPORT, host_record=record, target=args["repository"],
                         args=[str(spool), args["repository"], args["tag"], args["change"]],
                         body=args, spool=spool)


@blp.route("/hosts/<string:host>/events/stream")
class HostEventStream(MethodView):
    @requires("viewer")
    @blp.arguments(EventStreamArgsSchema, location="query")
    @blp.response(200, description="text/event-stream, one `event` per engine event")
    def get(self, args: dict, host: str) -> Response:
        """`docker events` as a live Server-Sent-Events stream."""
        filters = {key: args[key] for key in ("type", "event", "container") if args[key]}
        _meta, reader = open_stream(TRANSFERS_FOLLOW_EVENTS, host_record(host), [{
            "since": args["since"], "until": args["until"], "filters": filters}])
        return sse_response(reader, "event", redacted_json_line)
