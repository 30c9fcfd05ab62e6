"""``docker build`` on one engine: contexts, the streamed build log, cancellation, extra tags."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import socket
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import docker
import requests

from app.core.errors import DockyardError, EngineError, JobCancelledError
from app.engine.images import split_reference

logger = logging.getLogger(__name__)

LineFn = Callable[[str], None]
StepFn = Callable[[int, int, str], None]

_STEP = re.compile(r"Step (\d+)/(\d+) : ")
_CANCEL_POLL_SECONDS = 0.5
REDACTED = "***"


class BuildFailedError(DockyardError):
    """The engine refused the Dockerfile or a step of it failed.

    The problem carries the failing ``step`` (``Step 2/3 : RUN …``, null when the build
    stopped before its first step) and the engine's own ``engine_message``.
    """

    status, slug, title = 422, "build-failed", "The build failed"

    def __init__(self, step: str | None, engine_message: str, **extra: Any) -> None:
        where = f"{step} failed" if step else "the build failed before its first step"
        super().__init__(f"{where}: {engine_message}", step=step,
                         engine_message=engine_message, **extra)


class Redactor:
    """Replaces secret values with ``***`` in text and in JSON-ready structures."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, REDACTED)
        return value

    def data(self, value: Any) -> Any:
        if not self.secrets:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.data(k): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(item) for item in value]
        return value

    def error(self, error: DockyardError) -> DockyardError:
        """The same error with every secret removed from its detail and extras."""
        error.detail = self.text(error.detail)
        error.args = (error.detail,)
        error.extra = self.data(error.extra)
        return error


@dataclass(frozen=True)
class BuildOptions:
    """What ``docker build`` is told besides the context."""

    tags: list[str] = field(default_factory=list)
    dockerfile: str = "Dockerfile"
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    pull: bool = False


def inline_context(dockerfile: str, path: str = "Dockerfile") -> io.BytesIO:
    """A context holding nothing but the Dockerfile (``docker build -f- . < /dev/null``)."""
    data = dockerfile.encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(path)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    archive.seek(0)
    return archive


@contextlib.contextmanager
def opened_context(spool: Path | None, dockerfile: str | None,
                   dockerfile_path: str) -> Iterator[BinaryIO | None]:
    """The uploaded context file, or an inline Dockerfile's tiny tar, open for the build."""
    if spool is not None:
        with open(spool, "rb") as file:
            yield file
    elif dockerfile is not None:
        yield inline_context(dockerfile, dockerfile_path)
    else:
        yield None


def build_image(client: docker.DockerClient, context: BinaryIO | str, options: BuildOptions,
                on_line: LineFn, on_step: StepFn, cancelled: Callable[[], bool]) -> str:
    """Run ``docker build``, stream its log, and tag the image with every tag.

    Args:
        context: a tar (plain or compressed; the engine detects which) or a git URL
            ``url#ref:subdir`` that the engine fetches itself.
        on_line: called with each complete line of build output.
        on_step: called with (steps done, steps in all, the step line) as each step starts.
        cancelled: polled every half second; once it answers True, the connection is shut,
            which makes the engine stop the build (it kills a running step's container).

    Returns:
        The image id.

    Raises:
        BuildFailedError: the Dockerfile is invalid or a step failed.
        JobCancelledError: ``cancelled`` answered True before the build finished.
        docker.errors.APIError, StreamError: other engine failures.
    """
    connection = _BuildConnection()
    watcher = threading.Thread(target=_watch_for_cancel, args=(connection, cancelled),
                               name="build-cancel-watch", daemon=True)
    kwargs = _build_kwargs(options)
    if isinstance(context, str):
        kwargs["path"] = context
    else:
        kwargs.update(fileobj=_CancellableReader(context, connection), custom_context=True)
    _trap_responses(client)
    watcher.start()
    _current.connection = connection
    try:
        image_id = _follow(client.api.build(**kwargs), on_line, on_step)
    except docker.errors.APIError as exc:
        if connection.cancelled.is_set():
            raise JobCancelledError("the build was cancelled") from None
        if exc.status_code in (400, 500):
            # The engine answers the request itself (not the stream) for a Dockerfile it
            # cannot parse or find, or a context it cannot read.
            raise BuildFailedError(None, str(exc.explanation or exc)) from None
        raise
    except (BuildFailedError, JobCancelledError):
        raise
    except Exception:
        if connection.cancelled.is_set():
            raise JobCancelledError("the build was cancelled") from None
        raise
    finally:
        _current.connection = None
        connection.done.set()
        watcher.join()
    if connection.cancelled.is_set():
        raise JobCancelledError("the build was cancelled")
    if image_id is None:
        raise EngineError("the build ended without reporting an image id")
    add_tags(client, image_id, options.tags[1:])
    return image_id


def add_tags(client: docker.DockerClient, image_id: str, tags: list[str]) -> None:
    """``docker tag IMAGE TAG`` for each tag; tagging again is harmless (redelivery)."""
    for reference in tags:
        repository, tag = split_reference(reference)
        client.api.tag(image_id, repository, tag)


def _build_kwargs(options: BuildOptions) -> dict[str, Any]:
    return {
        "tag": options.tags[0] if options.tags else None,
        "dockerfile": options.dockerfile,
        "buildargs": options.build_args or None,
        "target": options.target,
        "labels": options.labels or None,
        "nocache": options.no_cache,
        "pull": options.pull,
        "rm": True,
        "forcerm": True,
        "decode": True,
        # No read timeout: a step may print nothing for as long as it runs.
        "timeout": None,
    }


def _follow(stream: Iterator[dict[str, Any]], on_line: LineFn, on_step: StepFn) -> str | None:
    """Read the build stream to its end; the image id it reported, if any."""
    pending = ""
    step: str | None = None
    image_id = None
    for chunk in stream:
        if "errorDetail" in chunk or "error" in chunk:
            if pending:
                on_line(pending)
            detail = chunk.get("errorDetail") or {}
            raise BuildFailedError(step, detail.get("message") or chunk.get("error")
                                   or "the engine reported an error")
        image_id = (chunk.get("aux") or {}).get("ID") or image_id
        if "stream" in chunk:
            pending += chunk["stream"]
            *lines, pending = pending.split("\n")
            for line in lines:
                found = _STEP.match(line)
                if found:
                    step = line
                    on_step(int(found[1]) - 1, int(found[2]), line)
                on_line(line)
        elif chunk.get("status") and not chunk.get("progressDetail"):
            # Base-image pulls (`pull`) report per-layer status; the bars are left out.
            on_line(f"{chunk['id']}: {chunk['status']}" if chunk.get("id") else chunk["status"])
    if pending:
        on_line(pending)
    return image_id


# -- cancellation -----------------------------------------------------------------------------
#
# docker-py's build() hands back a generator and keeps the HTTP response to itself, and a read
# blocked on a socket is not woken by closing it from another thread. A response hook keeps a
# reference to this thread's /build response, so the watcher can shut its socket down.


class _BuildConnection:
    def __init__(self) -> None:
        self.response: requests.Response | None = None
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self._severed = False

    def sever(self) -> None:
        if self._severed or self.response is None:
            return
        self._severed = True
        try:
            # unix socket, tcp and tls connections all keep the socket here
            self.response.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            self.response.close()


_current = threading.local()


def _remember_build_response(response: requests.Response, *args: Any,
                             **kwargs: Any) -> requests.Response:
    connection = getattr(_current, "connection", None)
    if connection is not None and response.request.path_url.split("?")[0].endswith("/build"):
        connection.response = response
    return response


def _trap_responses(client: docker.DockerClient) -> None:
    hooks = client.api.hooks.setdefault("response", [])
    if _remember_build_response not in hooks:
        hooks.append(_remember_build_response)


def _watch_for_cancel(connection: _BuildConnection, cancelled: Callable[[], bool]) -> None:
    while not connection.done.wait(_CANCEL_POLL_SECONDS):
        try:
            if not connection.cancelled.is_set() and cancelled():
                connection.cancelled.set()
        except Exception:
            logger.warning("could not read the cancel flag of a build", exc_info=True)
        if connection.cancelled.is_set():
            connection.sever()


class _CancellableReader:
    """The context file as the upload reads it; stops the upload once the build is cancelled."""

    def __init__(self, file: BinaryIO, connection: _BuildConnection) -> None:
        self._file = file
        self._connection = connection
        start = file.tell()
        self._size = file.seek(0, io.SEEK_END)
        file.seek(start)

    def read(self, size: int = -1) -> bytes:
        if self._connection.cancelled.is_set():
            raise JobCancelledError("the build was cancelled")
        return self._file.read(size)

    def __len__(self) -> int:
        # requests sends Content-Length from this; the engine reads the context to its end.
        return self._size

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)
