"""/registries: private registries, their catalog and tags; credentials brokered per call."""

from __future__ import annotations

from typing import Any

from flask import url_for
from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import requires
from app.core.task_names import (
    REGISTRIES_CHECK,
    REGISTRIES_DELETE_MANIFEST,
    REGISTRIES_REPOSITORIES,
    REGISTRIES_TAGS,
)
from app.jobs.dispatch import run_central_query
from app.registry import client as registry_client
from app.registry import registries as registryviews
from app.runtime import runtime
from schemas.registries import (
    ManifestDeletedSchema,
    PageArgsSchema,
    RegistryCheckSchema,
    RegistryCreateSchema,
    RegistryPatchSchema,
    RegistrySchema,
    RepositoryPageSchema,
    TagPageSchema,
)

blp = Blueprint("registries", __name__, description="Private registries")

# The worker's whole conversation with a registry fits in its budget; wait a little longer.
QUERY_TIMEOUT = registry_client.BUDGET_SECONDS + 5


def ask_worker(task: str, name: str, *args: Any) -> Any:
    """Run a registry call on the central query lane; 404 first if the registry is unknown."""
    runtime().registries.get(name)
    return run_central_query(task, [name, *args], timeout=QUERY_TIMEOUT)


def with_next_url(page: dict[str, Any], endpoint: str, **values: Any) -> dict[str, Any]:
    following = page.get("next")
    page["next_url"] = url_for(endpoint, **values, **{k: v for k, v in following.items()
                                                      if v is not None}) if following else None
    return page


@blp.route("/registries")
class Registries(MethodView):
    @requires("viewer")
    @blp.response(200, RegistrySchema(many=True))
    def get(self) -> list[dict]:
        """List registries (never their passwords)."""
        return [registryviews.public_view(r) for r in runtime().registries.list()]

    @requires("admin")
    @blp.arguments(RegistryCreateSchema)
    @blp.response(201, RegistrySchema)
    def post(self, body: dict) -> dict:
        """Store a registry and its credentials (the password is encrypted at rest)."""
        record = runtime().registries.create(body["name"], body["url"], body["username"],
                                             body["password"], body["insecure"],
                                             body["ca_cert"])
        return registryviews.public_view(record)


@blp.route("/registries/<string:name>")
class Registry(MethodView):
    @requires("viewer")
    @blp.response(200, RegistrySchema)
    def get(self, name: str) -> dict:
        """One registry (never its password)."""
        return registryviews.public_view(runtime().registries.get(name))

    @requires("admin")
    @blp.arguments(RegistryPatchSchema)
    @blp.response(200, RegistrySchema)
    def patch(self, body: dict, name: str) -> dict:
        """Change a registry's url, credentials, CA or `insecure`; null clears a field."""
        return registryviews.public_view(runtime().registries.update(name, body))

    @requires("admin")
    @blp.response(204)
    def delete(self, name: str) -> None:
        """Forget a registry and its credentials."""
        runtime().registries.delete(name)


@blp.route("/registries/<string:name>/check")
class RegistryCheck(MethodView):
    @requires("operator")
    @blp.response(200, RegistryCheckSchema)
    def post(self, name: str) -> dict:
        """`docker login` without any host: `GET /v2/` with the stored credentials.

        Wrong credentials answer 502 with the registry's reason; an unreachable registry 503.
        """
        return ask_worker(REGISTRIES_CHECK, name)


@blp.route("/registries/<string:name>/repositories")
class Repositories(MethodView):
    @requires("viewer")
    @blp.arguments(PageArgsSchema, location="query")
    @blp.response(200, RepositoryPageSchema)
    def get(self, args: dict, name: str) -> dict:
        """`GET /v2/_catalog`, one page; `next` and `next_url` follow the registry's Link."""
        page = ask_worker(REGISTRIES_REPOSITORIES, name, args["n"], args["last"])
        return with_next_url(page, "registries.Repositories", name=name)


# A repository name may hold slashes (team/web), so it is a `path` segment; the static
# suffix (/tags, /manifests/<ref>) ends it.
@blp.route("/registries/<string:name>/repositories/<path:repository>/tags")
class Tags(MethodView):
    @requires("viewer")
    @blp.arguments(PageArgsSchema, location="query")
    @blp.response(200, TagPageSchema)
    def get(self, args: dict, name: str, repository: str) -> dict:
        """`GET /v2/<repository>/tags/list`, one page."""
        registry_client.validate_repository(repository)
        page = ask_worker(REGISTRIES_TAGS, name, repository, args["n"], args["last"])
        return with_next_url(page, "registries.Tags", name=name, repository=repository)


@blp.route("/registries/<string:name>/repositories/<path:repository>/manifests/"
           "<string:reference>")
class Manifest(MethodView):
    @requires("admin")
    @blp.response(200, ManifestDeletedSchema)
    def delete(self, name: str, repository: str, reference: str) -> dict:
        """Delete a manifest by digest; a tag is resolved to its digest first.

        Every tag pointing at that digest goes with it. A registry without
        `storage.delete.enabled` answers 409.
        """
        registry_client.validate_repository(repository)
        registry_client.validate_reference(reference)
        return ask_worker(REGISTRIES_DELETE_MANIFEST, name, repository, reference)
