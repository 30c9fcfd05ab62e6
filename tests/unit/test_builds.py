"""Build specs, the build-log parser, redaction and the streamed multipart reader."""

from __future__ import annotations

import io
import tarfile

import pytest
from marshmallow import ValidationError

from api.builds import FormParts
from app.core.errors import BadRequestError, EngineError
from app.engine.builds import BuildFailedError, Redactor, _follow, inline_context
from schemas.builds import BuildSpecSchema, context_errors, is_context_path, is_tag_reference

# -- the spec -----------------------------------------------------------------------------


def test_a_minimal_spec_gets_docker_build_defaults():
    spec = BuildSpecSchema().load({"host": "local", "dockerfile": "FROM scratch\n"})
    assert spec == {"host": "local", "dockerfile": "FROM scratch\n", "tags": [],
                    "dockerfile_path": "Dockerfile", "build_args": {}, "target": None,
                    "labels": {}, "no_cache": False, "pull": False, "push": None}


def test_build_args_are_plain_or_marked_secret():
    spec = BuildSpecSchema().load({"host": "local", "git": "git://h/r.git", "build_args": {
        "PLAIN": "a", "TOKEN": {"value": "s", "secret": True}, "OPEN": {"value": "o"}}})
    assert spec["build_args"] == {"PLAIN": {"value": "a", "secret": False},
                                  "TOKEN": {"value": "s", "secret": True},
                                  "OPEN": {"value": "o", "secret": False}}


@pytest.mark.parametrize("field, value", [
    ("tags", ["UPPER/case"]), ("tags", ["a/b:bad tag"]), ("tags", ["a@sha256:" + "0" * 64]),
    ("tags", ["a:1", "a:1"]), ("tags", ["t"] * 21),
    ("build_args", {"1X": "a"}), ("build_args", {"X": {"value": "a", "other": 1}}),
    ("build_args", {"X": {"value": 1}}), ("build_args", {"X": {"value": "a", "secret": "yes"}}),
    ("build_args", {"X": 1}),
    ("dockerfile_path", "/etc/Dockerfile"), ("dockerfile_path", "a/../../Dockerfile"),
    ("dockerfile_path", ""), ("target", "-stage"), ("push", {}), ("push", {"registry": "UP"}),
    ("push", {"registry": "local", "insecure": True}), ("unknown", 1),
    ("git", "https://example.com/archive.tar.gz"), ("git", "ssh://h/r.git"),
    ("git", "git://h/r.git#a b"), ("git", "file:///srv/r.git"), ("git", "git@h:r.git"),
    ("dockerfile", ""),
])
def test_invalid_specs_name_the_field(field, value):
    with pytest.raises(ValidationError) as caught:
        BuildSpecSchema().load({"host": "local", "tags": ["a:1"], field: value})
    assert field in caught.value.messages


def test_a_pushed_build_needs_a_tag():
    with pytest.raises(ValidationError) as caught:
        BuildSpecSchema().load({"host": "local", "dockerfile": "x", "push": {"registry": "r"}})
    assert "tags" in caught.value.messages


@pytest.mark.parametrize("url", [
    "git://127.0.0.1:9418/repo.git", "git://h/repo.git#main", "git://h/repo#main:sub/dir",
    "https://git.example.com/team/repo.git#v1.2:docker", "http://127.0.0.1:8080/r.git#:sub",
])
def test_git_urls_the_engine_fetches_as_repositories(url):
    assert BuildSpecSchema().load({"host": "local", "git": url})["git"] == url


@pytest.mark.parametrize("value, ok", [
    ("web", True), ("team/web:1", True), ("127.0.0.1:5000/team/web:v1.2", True),
    ("web@sha256:" + "0" * 64, False), ("Web", False), ("web:", False),
])
def test_tag_references(value, ok):
    assert is_tag_reference(value) is ok


@pytest.mark.parametrize("value, ok", [
    ("Dockerfile", True), ("docker/Dockerfile.prod", True), ("..Dockerfile", True),
    ("../Dockerfile", False), ("a/../b", False), ("/Dockerfile", False), ("a\\..\\b", False),
    ("a\nb", False),
])
def test_context_paths(value, ok):
    assert is_context_path(value) is ok


def test_exactly_one_context():
    assert context_errors({"git": "g"}, uploaded=False) == {}
    assert context_errors({"dockerfile": "d"}, uploaded=False) == {}
    assert context_errors({}, uploaded=True) == {}
    assert set(context_errors({}, uploaded=False)) == {"git", "dockerfile"}
    assert set(context_errors({"git": "g", "dockerfile": "d"}, uploaded=False)) == \
        {"git", "dockerfile"}
    assert set(context_errors({"dockerfile": "d"}, uploaded=True)) == {"dockerfile"}


# -- the build stream ---------------------------------------------------------------------


def collect(chunks):
    lines, steps = [], []
    image_id = _follow(iter(chunks), lines.append,
                       lambda done, total, line: steps.append((done, total, line)))
    return image_id, lines, steps


def test_stream_lines_are_joined_and_steps_reported():
    image_id, lines, steps = collect([
        {"stream": "Step 1/2 : FROM busybox"}, {"stream": "\n"}, {"stream": " ---> abc\n"},
        {"stream": "Step 2/2 : RUN echo a"}, {"stream": "\n ---> Running in 1\na\nb"},
        {"stream": "\n"}, {"aux": {"ID": "sha256:feed"}},
        {"stream": "Successfully built feed\n"}])
    assert image_id == "sha256:feed"
    assert lines == ["Step 1/2 : FROM busybox", " ---> abc", "Step 2/2 : RUN echo a",
                     " ---> Running in 1", "a", "b", "Successfully built feed"]
    assert steps == [(0, 2, "Step 1/2 : FROM busybox"), (1, 2, "Step 2/2 : RUN echo a")]


def test_an_error_chunk_names_the_step_that_failed():
    with pytest.raises(BuildFailedError) as caught:
        collect([{"stream": "Step 1/2 : FROM busybox\n"}, {"stream": "Step 2/2 : RUN false\n"},
                 {"errorDetail": {"code": 1, "message": "returned a non-zero code: 1"},
                  "error": "returned a non-zero code: 1"}])
    problem = caught.value.to_problem()
    assert problem["status"] == 422
    assert problem["step"] == "Step 2/2 : RUN false"
    assert problem["engine_message"] == "returned a non-zero code: 1"
    assert problem["detail"] == "Step 2/2 : RUN false failed: returned a non-zero code: 1"


def test_a_stream_without_an_image_id_reports_none():
    assert collect([{"stream": "partial line"}]) == (None, ["partial line"], [])


def test_inline_context_holds_only_the_dockerfile_at_its_path():
    with tarfile.open(fileobj=inline_context("FROM scratch\n", "build/Containerfile")) as tar:
        assert tar.getnames() == ["build/Containerfile"]
        assert tar.extractfile("build/Containerfile").read() == b"FROM scratch\n"


# -- redaction ----------------------------------------------------------------------------


def test_redaction_replaces_every_secret_value_longest_first():
    redactor = Redactor(["abc", "abcdef", ""])
    assert redactor.text("x abcdef y abc") == "x *** y ***"
    assert redactor.data({"k": ["abc", {"abcdef": 1}], "n": 2}) == {"k": ["***", {"***": 1}],
                                                                     "n": 2}


def test_redacted_errors_keep_their_type_and_status():
    error = Redactor(["tok"]).error(EngineError("registry said tok is bad", hint="tok"))
    assert isinstance(error, EngineError)
    assert error.to_problem()["detail"] == "registry said *** is bad"
    assert error.to_problem()["hint"] == "***"
    assert str(error) == "registry said *** is bad"


# -- the multipart reader -----------------------------------------------------------------


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename
                                                     else "")
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n").encode()
        body += data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def parts_of(body: bytes, chunk_reads: int = 7) -> dict[str | None, bytes]:
    class Trickle(io.BytesIO):
        def read(self, size: int = -1) -> bytes:
            return super().read(chunk_reads)

    return {name: b"".join(data) for name, data in FormParts(Trickle(body), b"b0undary").parts()}


@pytest.mark.parametrize("payload", [
    bytes(range(256)) * 40,
    bytes(range(256)) * 40 + b"\r\n--b0und",  # a delimiter's start inside the data
    b"\r\n--b0undar\r\n--b0undarX--", b"", b"\r\n",
])
def test_parts_stream_in_order_across_any_chunking(payload):
    body = multipart([("spec", None, b'{"host": "local"}'), ("context", "c.tar", payload)])
    for size in (*range(1, 40), 4096, len(body)):
        assert parts_of(body, size) == {"spec": b'{"host": "local"}', "context": payload}, size


def test_preamble_padding_and_epilogue_are_ignored():
    body = b"preamble\r\n" + multipart([("spec", None, b"x")]).replace(
        b"--b0undary\r\n", b"--b0undary  \r\n", 1) + b"epilogue"
    assert parts_of(body) == {"spec": b"x"}


@pytest.mark.parametrize("body", [
    multipart([("context", "c.tar", b"x" * 100)])[:60],  # truncated inside a part
    b"--b0undary\r\nContent-Disposition: form-data; name=a\r\n",  # header never ends
    b"no boundary at all",
    b"--b0undary junk\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b0undary--",
])
def test_malformed_bodies_are_bad_requests(body):
    with pytest.raises(BadRequestError):
        parts_of(body)
