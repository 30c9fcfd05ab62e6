"""Tar transfers with an engine: ``cp`` both ways, ``save``/``load``, ``import``, and the
follow streams (``logs -f``, ``events``). Downloads return (metadata, chunks, closer)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker

from app.core.errors import NotFoundError
from app.engine.containers import time_arg
from app.engine.errors import raise_for_stream_chunk
from app.jobs.pipes import CHUNK_BYTES

Download = tuple[dict[str, Any], Iterator[bytes], Callable[[], None]]


def archive_out(client: docker.DockerClient, ref: str, path: str) -> Download:
    """``docker cp CONTAINER:PATH -``: a tar of ``path``, streamed."""
    chunks, stat = client.api.get_archive(ref, path, chunk_size=CHUNK_BYTES)
    return {"stat": stat}, chunks, getattr(chunks, "close", lambda: None)


def archive_in(client: docker.DockerClient, ref: str, path: str, tar_file: Path) -> dict[str, Any]:
    """``docker cp - CONTAINER:PATH``: extract an uploaded tar into the container."""
    client.api.inspect_container(ref)
    with open(tar_file, "rb") as data:
        client.api.put_archive(ref, path, data)
    return {"container": ref, "path": path, "bytes": tar_file.stat().st_size}


def save_images(client: docker.DockerClient, refs: list[str]) -> Download:
    """``docker save REF...``: one tar holding every image, streamed."""
    for ref in refs:
        try:
            client.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            raise NotFoundError(f"no image '{ref}'") from None
    # docker-py's get_image takes one name; the engine's /images/get takes several.
    api = client.api
    response = api._get(api._url("/images/get"), params={"names": refs}, stream=True)
    api._raise_for_status(response)
    return ({"images": refs}, response.iter_content(chunk_size=CHUNK_BYTES), response.close)


def load_images(client: docker.DockerClient, tar_file: Path,
                on_line: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``docker load``: returns the loaded references and image ids."""
    loaded: list[str] = []
    with open(tar_file, "rb") as data:
        for chunk in client.api.load_image(data):
            raise_for_stream_chunk(chunk)
            text = (chunk.get("stream") or chunk.get("status") or "").strip()
            for prefix in ("Loaded image: ", "Loaded image ID: "):
                if text.startswith(prefix):
                    loaded.append(text.removeprefix(prefix))
            if text and on_line:
                on_line(text)
    return {"loaded": loaded}


def import_image(client: docker.DockerClient, tar_file: Path, repository: str | None,
                 tag: str | None, changes: list[str]) -> dict[str, Any]:
    """``docker import FILE [REPO[:TAG]] --change …``: a filesystem tar becomes an image.

    Only uploaded bytes are imported; the engine is never asked to fetch a URL.
    """
    api = client.api
    params = {"fromSrc": "-", "repo": repository, "tag": tag, "changes": changes or None}
    with open(tar_file, "rb") as data:
        response = api._post(api._url("/images/create"), data=data, params=params,
                             headers={"Content-Type": "application/tar"}, timeout=None)
    api._raise_for_status(response)
    image_id = None
    for line in response.text.splitlines():
        if not line.strip():
            continue
        chunk = json.loads(line)
        raise_for_stream_chunk(chunk)
        image_id = chunk.get("status", image_id)
    return {"id": image_id, "repository": repository, "tag": tag}


def follow_logs(client: docker.DockerClient, ref: str, tail: str, since: Any,
                timestamps: bool) -> Download:
    """``docker logs -f``: ends when the container stops."""
    info = client.api.inspect_container(ref)
    stream = client.api.logs(ref, stream=True, follow=True, timestamps=timestamps,
                             tail=tail if tail == "all" else int(tail), since=time_arg(since))
    return {"id": info["Id"], "name": info["Name"].lstrip("/")}, stream, stream.close


def follow_events(client: docker.DockerClient, since: Any, filters: dict[str, Any] | None,
                  until: Any = None) -> Download:
    """``docker events``: one JSON document per line, until the reader leaves (or ``until``).

    Without ``since`` the stream starts at this moment, not at the engine's subscription:
    dockerd sends the response headers before it subscribes, so an event right after the
    stream opened could otherwise be missed. Now is taken on the worker before the call,
    hence before the API's 200 (same clock as a local engine; a remote engine's clock skew
    shifts the start by that skew).
    """
    start = time_arg(since) if since not in (None, "") else f"{time.time():.9f}"
    stream = client.api.events(since=start, until=time_arg(until),
                               filters=filters or None, decode=True)
    lines = (json.dumps(event).encode() + b"\n" for event in stream)
    return {"filters": filters or {}}, lines, stream.close
