"""Byte streams from a worker to the API through Redis, bounded so memory stays flat.

The API never talks to an engine, so a download (``docker cp``, ``save``, ``logs -f``)
is produced by a worker and relayed: the worker pushes a header, then chunks, then an
end mark onto a Redis list; the API pops and forwards them. Backpressure is by credits:
the reader hands back one credit per chunk it took, and the worker blocks for a credit
once ``MAX_QUEUED`` chunks are in flight, so at most that many sit in Redis. The worker
stops when the reader has gone.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from app.core.errors import DockyardError, QueryTimeoutError, error_from_problem
from app.core.store import PREFIX, get_redis_bytes

HEADER, DATA, ERROR, END, CONTROL = b"H", b"D", b"E", b"Z", b"C"
MAX_QUEUED = 8
CHUNK_BYTES = 1024 * 1024
STALL_SECONDS = 60.0
PIPE_TTL_SECONDS = 300


class PipeClosedError(Exception):
    """The reader went away (client disconnected or stalled out)."""


def new_pipe_id(host: str | None = None) -> str:
    """A pipe id; one that names a host (``host/hex``) keeps its keys under the host's prefix."""
    return f"{host}/{uuid.uuid4().hex}" if host else uuid.uuid4().hex


def _data_key(pipe_id: str) -> str:
    host, scoped, rest = pipe_id.rpartition("/")
    return f"{PREFIX}h:{host}:pipe:{rest}" if scoped else f"{PREFIX}pipe:{pipe_id}"


def _closed_key(pipe_id: str) -> str:
    return _data_key(pipe_id) + ":closed"


def _credit_key(pipe_id: str) -> str:
    return _data_key(pipe_id) + ":credit"


class _PipeEnd:
    """The Redis keys one pipe uses, seen from either end."""

    def __init__(self, pipe_id: str, stall_seconds: float = STALL_SECONDS) -> None:
        self.redis = get_redis_bytes()
        self.key = _data_key(pipe_id)
        self.closed_key = _closed_key(pipe_id)
        self.credit_key = _credit_key(pipe_id)
        self.stall_seconds = stall_seconds


class PipeWriter(_PipeEnd):
    """The worker's end: header first, then bytes, then ``end()`` (or ``fail()``)."""

    def __init__(self, pipe_id: str, stall_seconds: float = STALL_SECONDS) -> None:
        super().__init__(pipe_id, stall_seconds)
        self.bytes_sent = 0
        self.chunks_sent = 0

    def _push(self, kind: bytes, payload: bytes) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(self.key, kind + payload)
        pipe.expire(self.key, PIPE_TTL_SECONDS)
        pipe.execute()

    def header(self, meta: dict[str, Any]) -> None:
        self._push(HEADER, json.dumps(meta, default=str).encode())

    def fail(self, problem: dict[str, Any]) -> None:
        self._push(ERROR, json.dumps(problem).encode())

    def end(self) -> None:
        self._push(END, b"")

    def control(self, message: dict[str, Any]) -> None:
        """Queue a JSON control message in order with the bytes (it takes no credit)."""
        self._push(CONTROL, json.dumps(message).encode())

    def reader_gone(self) -> bool:
        return bool(self.redis.exists(self.closed_key))

    def write(self, chunk: bytes) -> None:
        """Queue a chunk, waiting while the reader is behind.

        Raises:
            PipeClosedError: the reader left, or did not read for ``stall_seconds``.
        """
        for start in range(0, len(chunk), CHUNK_BYTES):
            if self.chunks_sent >= MAX_QUEUED:
                self._take_credit()
            self._push(DATA, chunk[start:start + CHUNK_BYTES])
            self.chunks_sent += 1
        self.bytes_sent += len(chunk)

    def _take_credit(self) -> None:
        deadline = time.monotonic() + self.stall_seconds
        while self.redis.blpop([self.credit_key], timeout=1) is None:
            if self.reader_gone() or time.monotonic() > deadline:
                raise PipeClosedError(self.key)


class PipeReader(_PipeEnd):
    """The API's end: ``open()`` waits for the header, then iterate for the bytes."""

    def open(self, timeout: float) -> dict[str, Any]:
        """The producer's header (metadata), or its error raised as a Dockyard error."""
        item = self.redis.blpop([self.key], timeout=timeout)
        if item is None:
            self.close()
            raise QueryTimeoutError(f"the worker did not start the stream within {timeout:g}s")
        kind, payload = item[1][:1], item[1][1:]
        if kind == ERROR:
            self.close()
            raise error_from_problem(json.loads(payload))
        if kind != HEADER:
            self.close()
            raise DockyardError("stream started without a header")
        return json.loads(payload)

    def chunks(self) -> Iterator[bytes]:
        """The bytes, until the end mark; stops (and tells the worker) if the caller stops."""
        try:
            while True:
                item = self.redis.blpop([self.key], timeout=self.stall_seconds)
                if item is None:
                    raise QueryTimeoutError("the stream stalled")
                kind, payload = item[1][:1], item[1][1:]
                if kind == END:
                    return
                if kind == ERROR:
                    raise error_from_problem(json.loads(payload))
                pipe = self.redis.pipeline(transaction=False)
                pipe.rpush(self.credit_key, b"1")
                pipe.expire(self.credit_key, PIPE_TTL_SECONDS)
                pipe.execute()
                yield payload
        finally:
            self.close()

    def poll(self, timeout: float) -> tuple[bytes, bytes] | None:
        """The next item as (kind, payload), or None after ``timeout`` seconds without one.

        For a long-lived stream whose reader has other things to watch between items (an
        interactive session); each DATA item taken hands a credit back to the writer.
        """
        item = self.redis.blpop([self.key], timeout=timeout)
        if item is None:
            return None
        kind, payload = item[1][:1], item[1][1:]
        if kind == DATA:
            pipe = self.redis.pipeline(transaction=False)
            pipe.rpush(self.credit_key, b"1")
            pipe.expire(self.credit_key, PIPE_TTL_SECONDS)
            pipe.execute()
        return kind, payload

    def close(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.closed_key, b"1", ex=PIPE_TTL_SECONDS)
        pipe.delete(self.key, self.credit_key)
        pipe.execute()
