"""Image operations on an engine: ensure an image is present, pulling with brokered credentials."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import docker

from app.engine.errors import raise_for_stream_chunk
from app.errors import NotFoundError

ProgressFn = Callable[[int | None, int | None, str, str], None]


def split_reference(reference: str) -> tuple[str, str | None]:
    """``repo[:tag][@digest]`` → (repository, tag or digest); the tag defaults to latest."""
    if "@" in reference:
        repo, digest = reference.split("@", 1)
        return repo, digest
    last = reference.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = reference.rsplit(":", 1)
        return repo, tag
    return reference, "latest"


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


def describe(spec_image: str, inspect: dict[str, Any]) -> dict[str, Any]:
    return {"reference": spec_image, "id": inspect.get("Id")}
