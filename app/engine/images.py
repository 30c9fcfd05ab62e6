"""Image operations on one engine (``docker images/pull/push/tag/rmi/history/search/image prune``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import docker

from app.core.errors import EngineError, NotFoundError
from app.engine.errors import raise_for_stream_chunk, translate_engine_error
from app.engine.references import (  # noqa: F401 (moved there, without docker-py, for the API)
    explicit_registry,
    resolve_in_registry,
    split_reference,
)

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int | None, int | None, str, str], None]


def image_present(client: docker.DockerClient, reference: str) -> bool:
    try:
        client.api.inspect_image(reference)
        return True
    except docker.errors.ImageNotFound:
        return False


def pull_image(client: docker.DockerClient, reference: str, auth: dict[str, str] | None,
               progress: ProgressFn | None = None) -> str:
    """Pull ``reference`` and return its image id.

    The stream is read to its end: docker cancels a pull whose client stops reading, and
    errors arrive in-band rather than as an HTTP status.

    Raises:
        StreamError: the engine or registry reported an error in the stream.
    """
    repository, tag = split_reference(reference)
    layers: dict[str, tuple[int, int]] = {}
    stream = client.api.pull(repository, tag=tag, stream=True, decode=True, auth_config=auth)
    for chunk in stream:
        raise_for_stream_chunk(chunk)
        layer = chunk.get("id")
        detail = chunk.get("progressDetail") or {}
        if layer and detail.get("total"):
            layers[layer] = (detail.get("current", 0), detail["total"])
        if progress and layer:
            done = sum(1 for s in layers.values() if s[0] >= s[1])
            progress(done, len(layers) or None, "layers", f"{layer}: {chunk.get('status', '')}")
    if progress:
        progress(len(layers), len(layers), "layers", f"pulled {reference}")
    return client.api.inspect_image(reference)["Id"]


def ensure_image(client: docker.DockerClient, reference: str, policy: str,
                 auth: dict[str, str] | None, progress: ProgressFn | None = None) -> None:
    """Apply a pull policy: ``missing`` pulls if absent, ``always`` pulls, ``never`` requires it.

    Raises:
        NotFoundError: policy ``never`` and the image is not on the host.
    """
    if policy == "always" or (policy == "missing" and not image_present(client, reference)):
        pull_image(client, reference, auth, progress)
    elif policy == "never" and not image_present(client, reference):
        raise NotFoundError(f"image '{reference}' is not on the host and pull is 'never'")


# -- reads ----------------------------------------------------------------------------------

def list_images(client: docker.DockerClient, *, all: bool = False, dangling: bool | None = None,
                reference: str | None = None, labels: list[str] | None = None,
                quiet: bool = False) -> list[Any]:
    """``docker images [-a] [-q] [-f dangling=…] [-f label=…] [REPOSITORY[:TAG]]``.

    One row per image (the engine's own listing), with all its tags; ``quiet`` gives the
    full ids only, the set ``docker images -q --no-trunc`` prints.
    """
    filters: dict[str, Any] = {}
    if dangling is not None:
        filters["dangling"] = dangling
    if labels:
        filters["label"] = labels
    if reference:
        filters["reference"] = reference
    rows = client.api.images(all=all, filters=filters or None)
    if quiet:
        return [row["Id"] for row in rows]
    return [_image_summary(row) for row in rows]


def _image_summary(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["Id"],
        "repo_tags": [t for t in row.get("RepoTags") or [] if t != "<none>:<none>"],
        "repo_digests": [d for d in row.get("RepoDigests") or [] if d != "<none>@<none>"],
        "parent_id": row.get("ParentId") or None,
        "created": row.get("Created", 0),
        "size": row.get("Size", 0),
        "labels": row.get("Labels") or {},
    }


def inspect_image(client: docker.DockerClient, ref: str) -> dict[str, Any]:
    """``docker image inspect`` by id, unique id prefix, name or digest."""
    return client.api.inspect_image(ref)


def image_history(client: docker.DockerClient, ref: str) -> list[dict[str, Any]]:
    """``docker history --no-trunc``: newest layer first; layers built elsewhere have no id."""
    return [{"id": row["Id"] if row.get("Id") not in (None, "", "<missing>") else None,
             "created": row.get("Created", 0), "created_by": row.get("CreatedBy", ""),
             "tags": row.get("Tags") or [], "size": row.get("Size", 0),
             "comment": row.get("Comment", "")}
            for row in client.api.history(ref)]


def search_images(client: docker.DockerClient, term: str, limit: int) -> list[dict[str, Any]]:
    """``docker search --limit N``: the engine asks its index, so it needs a route to it."""
    return [{"name": row.get("name"), "description": row.get("description", ""),
             "stars": row.get("star_count", 0), "official": bool(row.get("is_official")),
             "automated": bool(row.get("is_automated"))}
            for row in client.api.search(term, limit=limit)]


# -- operations -----------------------------------------------------------------------------

def tag_image(client: docker.DockerClient, ref: str, repository: str, tag: str) -> dict[str, Any]:
    """``docker tag REF REPOSITORY:TAG``; tagging again is harmless, so a redelivery is too."""
    image_id = client.api.inspect_image(ref)["Id"]
    client.api.tag(image_id, repository, tag)
    return {"id": image_id, "ref": f"{repository}:{tag}"}


def remove_image(client: docker.DockerClient, ref: str, force: bool) -> dict[str, Any]:
    """``docker rmi [-f] REF``: untag it, and delete the image once no tag is left.

    Raises:
        docker.errors.APIError: 404 unknown image, 409 in use by a container or, for an id,
            referenced by several repositories without ``force``.
    """
    answer = client.api.remove_image(ref, force=force) or []
    return {"ref": ref,
            "untagged": [row["Untagged"] for row in answer if "Untagged" in row],
            "deleted": [row["Deleted"] for row in answer if "Deleted" in row]}


def remove_images(client: docker.DockerClient, refs: list[str], force: bool,
                  host: str) -> dict[str, Any]:
    """``docker rmi [-f] A B …``: like the CLI, one refusal does not stop the others.

    Returns:
        One outcome per ref, in order: what it untagged and deleted, or the problem.
    """
    outcomes = []
    for ref in refs:
        try:
            outcomes.append({**remove_image(client, ref, force), "error": None})
        except docker.errors.APIError as exc:
            outcomes.append({"ref": ref, "untagged": [], "deleted": [],
                             "error": translate_engine_error(exc, host).to_problem()})
    failed = sum(1 for outcome in outcomes if outcome["error"])
    return {"results": outcomes, "removed": len(outcomes) - failed, "failed": failed}


def prune_images(client: docker.DockerClient, *, all: bool = False,
                 filters: dict[str, Any] | None = None) -> dict[str, Any]:
    """``docker image prune [-a] [--filter …]``: dangling images only unless ``all``."""
    answer = client.api.prune_images(filters={**(filters or {}), "dangling": not all})
    rows = answer.get("ImagesDeleted") or []
    return {"deleted": [row["Deleted"] for row in rows if "Deleted" in row],
            "untagged": [row["Untagged"] for row in rows if "Untagged" in row],
            "space_reclaimed": answer.get("SpaceReclaimed") or 0}


def pull_and_inspect(client: docker.DockerClient, reference: str, auth: dict[str, str] | None,
                     progress: ProgressFn | None = None) -> dict[str, Any]:
    """``docker pull``: the image id and the digests it is known by afterwards."""
    image_id = pull_image(client, reference, auth, progress)
    digests = client.api.inspect_image(image_id).get("RepoDigests") or []
    return {"ref": reference, "id": image_id, "repo_digests": digests}


_LAYER_DONE = ("Pushed", "Layer already exists", "Mounted from")


def push_image(client: docker.DockerClient, source: str, repository: str, tag: str,
               auth: dict[str, str] | None, progress: ProgressFn | None = None) -> dict[str, Any]:
    """``docker tag SOURCE REPOSITORY:TAG`` (when they differ) then ``docker push``.

    docker-py's push() does not raise on a failed push: the registry's reason arrives
    in-band, so every chunk is checked. A tag made here for a push that failed is removed.

    Returns:
        The pushed reference, the image id and the manifest digest the registry stored.

    Raises:
        StreamError: the engine or the registry reported an error in the stream.
        EngineError: the stream ended without the manifest digest.
    """
    image_id = client.api.inspect_image(source)["Id"]
    target = f"{repository}:{tag}"
    earlier = _image_id(client, target)
    if earlier != image_id:
        client.api.tag(image_id, repository, tag)
    made_tag = earlier is None
    try:
        digest = _push_stream(client, repository, tag, auth, progress)
    except BaseException:
        if made_tag:
            _untag_quietly(client, target)
        raise
    return {"ref": target, "id": image_id, "digest": digest}


def _push_stream(client: docker.DockerClient, repository: str, tag: str,
                 auth: dict[str, str] | None, progress: ProgressFn | None) -> str:
    layers: dict[str, bool] = {}
    digest = None
    for chunk in client.api.push(repository, tag=tag, stream=True, decode=True,
                                 auth_config=auth):
        raise_for_stream_chunk(chunk)
        digest = (chunk.get("aux") or {}).get("Digest") or digest
        layer, status = chunk.get("id"), chunk.get("status") or ""
        if layer and status:
            layers[layer] = layers.get(layer, False) or status.startswith(_LAYER_DONE)
            if progress:
                progress(sum(layers.values()), len(layers), "layers", f"{layer}: {status}")
    if digest is None:
        raise EngineError(f"the push of '{repository}:{tag}' ended without a manifest digest")
    if progress:
        progress(len(layers), len(layers), "layers", f"pushed {repository}:{tag}")
    return digest


def _image_id(client: docker.DockerClient, reference: str) -> str | None:
    try:
        return client.api.inspect_image(reference)["Id"]
    except docker.errors.ImageNotFound:
        return None


def _untag_quietly(client: docker.DockerClient, reference: str) -> None:
    try:
        client.api.remove_image(reference)
    except docker.errors.APIError:
        logger.warning("could not remove tag %s after a failed push", reference, exc_info=True)
