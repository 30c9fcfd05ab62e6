"""/builds: ``docker build`` (+ ``docker tag``, ``docker push``) as a job."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_options_header

from api.common import accepts, call, require_json_object, requires
from api.services import builds as service
from api.services.builds import load_spec
from app.core.errors import (
    BadRequestError,
    InvalidInputError,
    PayloadTooLargeError,
)
from app.jobs.spool import require_tar, spool_dir, spool_upload
from app.runtime import runtime
from schemas.builds import BuildJobSchema, BuildSpecSchema

blp = Blueprint("builds", __name__, description="Image builds, optionally pushed")

_READ_CHUNK = 256 * 1024
_DRAIN_CAP = 64 << 20
_MULTIPART_DOC = {
    "content": {
        "application/json": {"schema": BuildSpecSchema},
        "multipart/form-data": {
            "schema": {
                "type": "object", "required": ["context", "spec"],
                "properties": {
                    "context": {"type": "string", "format": "binary",
                                "description": "the build context, a tar or tar.gz"},
                    "spec": {"type": "string",
                             "description": "the build spec as JSON (without git/dockerfile)"},
                },
            },
        },
    },
}


@blp.route("/builds")
class Builds(MethodView):
    @requires("operator")
    @accepts("multipart/form-data")
    @blp.doc(requestBody=_MULTIPART_DOC)
    @blp.response(202, BuildJobSchema)
    def post(self) -> Any:
        """`docker build` + `docker tag` + optional `docker push` (job).

        The context is an uploaded tar(.gz) (`multipart/form-data`: a `context` file part and
        a `spec` JSON part; streamed to disk, never held in memory), a git URL
        `url#ref:subdir` the engine fetches itself, or an inline `dockerfile`. Events carry
        each build log line, step progress and per-layer push progress; the result is
        `{image_id, tags, pushed: [{ref, digest}]}`. Build args marked secret are redacted
        from events, logs and results; like `docker build --build-arg`, the classic builder
        still records the value of an arg used by a `RUN` in the image's history.
        """
        if request.mimetype == "multipart/form-data":
            spec, spool = read_build_form()
        else:
            spec, spool = load_spec(require_json_object(), uploaded=False), None
        try:
            return service.submit_build(call(), spec=spec, spool=spool)
        except BaseException:
            if spool is not None:
                spool.unlink(missing_ok=True)
            raise


# -- multipart, streamed --------------------------------------------------------------------


def read_build_form() -> tuple[dict[str, Any], Path]:
    """Read a multipart build request: the ``context`` part straight to the spool, the spec.

    Werkzeug's form parser would first copy the file part to a temporary file; parsing the
    stream here writes it once, to the spool, one chunk at a time.

    Raises:
        PayloadTooLargeError: the context is over ``max_upload_bytes`` (413).
        InvalidInputError: no context or spec part, a context that is not a tar, a bad spec.
        BadRequestError: a malformed multipart body or spec JSON.
    """
    settings = runtime().settings
    boundary = request.mimetype_params.get("boundary")
    if not boundary or len(boundary) > 70:
        raise BadRequestError("multipart/form-data needs a boundary of 1-70 characters")
    # The context is limited on its own below; the rest of the body is the spec and framing.
    request.max_content_length = settings.max_upload_bytes + settings.max_body_bytes
    stream = request.stream
    spool: Path | None = None
    spec_raw: bytes | None = None
    try:
        for name, data in FormParts(stream, boundary.encode()).parts():
            if name == "context" and spool is None:
                spool = spool_upload(_PartReader(data), spool_dir(settings.state_dir),
                                     settings.max_upload_bytes)
            elif name == "spec" and spec_raw is None:
                spec_raw = _read_small(data, settings.max_body_bytes)
            else:
                raise InvalidInputError(f"unexpected form part '{name}'",
                                        errors={name or "_form": ["unknown or repeated part"]})
        missing = [name for name, got in (("context", spool), ("spec", spec_raw)) if got is None]
        if missing:
            raise InvalidInputError("the form needs a context part and a spec part",
                                    errors={name: ["missing part"] for name in missing})
        require_tar(spool)
        return load_spec(_json(spec_raw), uploaded=True), spool
    except BaseException as exc:
        if spool is not None:
            spool.unlink(missing_ok=True)
        if isinstance(exc, PayloadTooLargeError):
            _drain(stream)
        raise


class FormParts:
    """The parts of a ``multipart/form-data`` stream (RFC 7578), read a chunk at a time.

    Each part's data is yielded as it arrives, never more than a chunk in memory; a caller
    reads a part's data to its end before asking for the next part.
    """

    _HEADER_LIMIT = 16 * 1024

    def __init__(self, stream: BinaryIO, boundary: bytes) -> None:
        self._stream = stream
        self._delimiter = b"\r\n--" + boundary
        # The first boundary may open the body without a line break before it.
        self._buffer = bytearray(b"\r\n")

    def parts(self) -> Iterator[tuple[str | None, Iterator[bytes]]]:
        """(name, data chunks) for each part, in order."""
        for _preamble in self._until_delimiter():
            pass
        while True:
            self._fill_to(2)
            if self._buffer.startswith(b"--"):
                return
            yield _part_name(self._headers()), self._until_delimiter()

    def _until_delimiter(self) -> Iterator[bytes]:
        keep = len(self._delimiter) - 1
        while True:
            found = self._buffer.find(self._delimiter)
            if found >= 0:
                if found:
                    yield bytes(self._buffer[:found])
                del self._buffer[:found + len(self._delimiter)]
                return
            if len(self._buffer) > keep:
                # The tail may be the start of a delimiter split across reads.
                chunk = bytes(self._buffer[:-keep])
                del self._buffer[:-keep]
                yield chunk
            if not self._read():
                raise BadRequestError("the multipart body is truncated or has no boundary "
                                      "where its Content-Type says")

    def _headers(self) -> bytes:
        """The header block of the part that starts here (after the boundary line)."""
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > self._HEADER_LIMIT or not self._read():
                raise BadRequestError("a multipart part has no complete header block")
        # What follows the boundary on its line is only transport padding.
        line_end = self._buffer.find(b"\r\n")
        if self._buffer[:line_end].strip(b" \t"):
            raise BadRequestError("the multipart body is malformed")
        block = bytes(self._buffer[line_end + 2:end])
        del self._buffer[:end + 4]
        return block

    def _fill_to(self, size: int) -> None:
        while len(self._buffer) < size:
            if not self._read():
                raise BadRequestError("the multipart body ends without its closing boundary")

    def _read(self) -> bool:
        chunk = self._stream.read(_READ_CHUNK)
        self._buffer += chunk
        return bool(chunk)


def _part_name(block: bytes) -> str | None:
    for line in block.decode("utf-8", "replace").split("\r\n"):
        field, _, value = line.partition(":")
        if field.strip().lower() == "content-disposition":
            _kind, options = parse_options_header(value.strip())
            return options.get("name")
    return None


class _PartReader:
    """A part's data iterator as the ``read()`` that spool_upload expects."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def read(self, _size: int = -1) -> bytes:
        return next(self._chunks, b"")


def _read_small(chunks: Iterator[bytes], limit: int) -> bytes:
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise PayloadTooLargeError(f"the spec part is larger than {limit} bytes")
    return bytes(data)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise BadRequestError("the spec part is not valid JSON") from None


def _drain(stream: BinaryIO) -> None:
    """Read (and drop) the rest of an over-limit body so the client sees the 413."""
    remaining = _DRAIN_CAP
    with contextlib.suppress(HTTPException, OSError):
        while remaining > 0:
            chunk = stream.read(min(_READ_CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)

