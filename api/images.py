"""/hosts/{host}/images: images, inspect, history, tag, rmi, prune, pull, push, search."""

from __future__ import annotations

import re
from typing import Any

from flask import jsonify
from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import call, charged_by_job, host_record, redacted, requires, start_job
from api.services import images as service
from api.services.images import caller_policy, stored_registry_address
from app.core.errors import InvalidInputError
from app.core.task_names import (
    IMAGES_HISTORY,
    IMAGES_INSPECT,
    IMAGES_PRUNE,
    IMAGES_PUSH,
    IMAGES_REMOVE,
    IMAGES_REMOVE_MANY,
    IMAGES_SEARCH,
    IMAGES_TAG,
)
from app.engine.references import resolve_in_registry, split_reference
from app.jobs.dispatch import run_query
from app.security.policy import (
    enforce_local_name,
    image_allowed,
)
from schemas.images import (
    REPOSITORY_ERROR,
    BulkRemoveArgsSchema,
    HistoryEntrySchema,
    ImageListArgsSchema,
    ImagePruneJobSchema,
    ImagePruneSchema,
    ImageRemovedJobSchema,
    ImageSummarySchema,
    PullJobSchema,
    PullSpecSchema,
    PushJobSchema,
    PushSpecSchema,
    RemoveImageArgsSchema,
    RemoveManyJobSchema,
    SearchArgsSchema,
    SearchResultSchema,
    TagJobSchema,
    TagSpecSchema,
    is_repository,
    prune_filters,
)

blp = Blueprint("images", __name__, description="Images on a host")

_IMAGE_ID = re.compile(r"(?:sha256:)?[0-9a-f]{1,64}")


def check_local_name(source: str, target: str, doing: str) -> None:
    """403 ``allowed-registries`` when ``target`` would make ``source`` look like an image of
    an allowed registry although ``source`` names none (an id, or another registry's name).

    Names in an allowed namespace are only ever made from images that already carry one (or
    pulled from there), so a source *named* in an allowed registry is of allowed origin.
    """
    policy, is_admin = caller_policy(call())
    # An id or id prefix says nothing of where the image came from (``cafe`` may be either).
    source_allowed = not _IMAGE_ID.fullmatch(source) and image_allowed(policy, source)
    enforce_local_name(policy, target, source_allowed, is_admin, doing)


@blp.route("/hosts/<string:host>/images")
class Images(MethodView):
    @requires("viewer")
    @blp.arguments(ImageListArgsSchema, location="query")
    @blp.response(200, ImageSummarySchema(many=True))
    def get(self, args: dict, host: str) -> Any:
        """`docker images [-a] [-q] [-f dangling=…] [-f label=…] [REPOSITORY[:TAG]]`.

        One row per image, with all its tags. With `quiet=true` the answer is the list of
        full image ids instead (`docker images -q --no-trunc`, one per image).
        """
        answer = service.list_images(call(), host=host, args=args)
        return jsonify(answer) if args["quiet"] else answer

    @charged_by_job
    @requires("operator")
    @blp.arguments(BulkRemoveArgsSchema, location="query")
    @blp.response(202, RemoveManyJobSchema)
    def delete(self, args: dict, host: str) -> Any:
        """`docker rmi [-f] A B …` (job): the result has one outcome per ref, in order."""
        return start_job(IMAGES_REMOVE_MANY, host_record=host_record(host),
                         target=" ".join(args["ref"])[:512], args=[args["ref"], args["force"]],
                         body=args)


@blp.route("/hosts/<string:host>/images/pull")
class ImagePull(MethodView):
    @charged_by_job
    @requires("operator")
    @blp.arguments(PullSpecSchema)
    @blp.response(202, PullJobSchema)
    def post(self, spec: dict, host: str) -> Any:
        """`docker pull NAME[:TAG|@DIGEST]` (job) with per-layer progress events.

        Credentials come from the stored registry named in `registry`, or the one whose
        address the reference names; a reference naming no registry is pulled from the
        named one.
        """
        return service.pull(call(), host=host, spec=spec)


@blp.route("/hosts/<string:host>/images/prune")
class ImagePrune(MethodView):
    @charged_by_job
    @requires("operator")
    @blp.arguments(ImagePruneSchema)
    @blp.response(202, ImagePruneJobSchema)
    def post(self, spec: dict, host: str) -> Any:
        """`docker image prune [-a] [--filter label=…|until=…]` (job); dangling images by default."""
        return start_job(IMAGES_PRUNE, host_record=host_record(host), target=None,
                         args=[spec["all"], prune_filters(spec["filters"])])


@blp.route("/hosts/<string:host>/images/search")
class ImageSearch(MethodView):
    @requires("viewer")
    @blp.arguments(SearchArgsSchema, location="query")
    @blp.response(200, SearchResultSchema(many=True))
    def get(self, args: dict, host: str) -> list[dict]:
        """`docker search --limit N TERM`, asked of the engine's index (502/503 if unreachable)."""
        return run_query(IMAGES_SEARCH, host_record(host), [args["term"], args["limit"]])


# {ref} is an id, a unique id prefix, name[:tag] or name@digest. Names hold slashes and a
# registry port (127.0.0.1:5000/team/web:1), so it is a `path` segment sent as is, without
# URL-encoding (servers decode %2F before routing anyway). /history, /tag and /push are read
# from the end of the path and the static routes (pull, prune, search, save, load, import)
# win over {ref}: a repository whose last component is one of those words is reached with
# its tag (team/history:latest).
@blp.route("/hosts/<string:host>/images/<path:ref>")
class Image(MethodView):
    @requires("viewer")
    @blp.response(200, description="the engine's `docker image inspect` document")
    def get(self, host: str, ref: str) -> dict:
        """`docker image inspect`: by id, unique id prefix, name or digest.

        Viewers see the image's environment values and secret-looking labels redacted.
        """
        return redacted("inspect", run_query(IMAGES_INSPECT, host_record(host), [ref]))

    @charged_by_job
    @requires("operator")
    @blp.arguments(RemoveImageArgsSchema, location="query")
    @blp.response(202, ImageRemovedJobSchema)
    def delete(self, args: dict, host: str, ref: str) -> Any:
        """`docker rmi [-f]` (job); an image a container uses is a 409 unless forced."""
        return start_job(IMAGES_REMOVE, host_record=host_record(host), target=ref,
                         args=[ref, args["force"]], body=args)


@blp.route("/hosts/<string:host>/images/<path:ref>/history")
class ImageHistory(MethodView):
    @requires("viewer")
    @blp.response(200, HistoryEntrySchema(many=True))
    def get(self, host: str, ref: str) -> list[dict]:
        """`docker history --no-trunc`: newest layer first."""
        return run_query(IMAGES_HISTORY, host_record(host), [ref])


@blp.route("/hosts/<string:host>/images/<path:ref>/tag")
class ImageTag(MethodView):
    @charged_by_job
    @requires("operator")
    @blp.arguments(TagSpecSchema)
    @blp.response(202, TagJobSchema)
    def post(self, spec: dict, host: str, ref: str) -> Any:
        """`docker tag REF REPOSITORY[:TAG]` (job).

        With an allow-list of registries, a name in an allowed registry's namespace is only
        given to an image REF names in an allowed registry (403 `allowed-registries`).
        """
        check_local_name(ref, spec["repository"], "tag")
        return start_job(IMAGES_TAG, host_record=host_record(host), target=ref,
                         args=[ref, spec["repository"], spec["tag"]])


@blp.route("/hosts/<string:host>/images/<path:ref>/push")
class ImagePush(MethodView):
    @charged_by_job
    @requires("operator")
    @blp.arguments(PushSpecSchema)
    @blp.response(202, PushJobSchema)
    def post(self, spec: dict, host: str, ref: str) -> Any:
        """`docker push` (job); the result has the manifest digest the registry stored.

        The pushed reference is REF's repository, in the stored `registry` if one is named
        (prefixed with its address when REF names no registry), with `tag` or REF's tag
        (default `latest`); when that differs from REF it is tagged first, like
        `docker tag` + `docker push`. Per-layer progress events.
        """
        record = host_record(host)
        if "@" in ref or ref.startswith("sha256:"):
            raise InvalidInputError("push a name[:tag], not an id or a digest",
                                    errors={"ref": ["must be a name[:tag]"]})
        repository, current_tag = split_reference(ref)
        if spec["registry"]:
            repository = resolve_in_registry(repository,
                                             stored_registry_address(spec["registry"]))
        if not is_repository(repository):
            raise InvalidInputError(f"cannot push '{repository}': {REPOSITORY_ERROR}",
                                    errors={"ref": [REPOSITORY_ERROR]})
        tag = spec["tag"] or current_tag
        check_local_name(ref, repository, "push")
        return start_job(IMAGES_PUSH, host_record=record, target=f"{repository}:{tag}",
                         args=[ref, repository, tag, spec["registry"]])
