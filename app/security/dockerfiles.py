"""Reading a Dockerfile as the classic builder does, to check it before the engine sees it."""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from app.core.errors import InvalidInputError

_DIRECTIVE = re.compile(r"#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*$")
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
_REMOTE_SOURCE = re.compile(r"(?:https?://|git@|git://|ssh://)", re.IGNORECASE)
_DOCKERFILE_LIMIT = 1 << 20


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass(frozen=True)
class BaseImage:
    """An image a build reads from a registry (or ``scratch``), after ARG substitution."""

    reference: str
    instruction: str
    line: int


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped.

    The ``escape`` parser directive (only in the leading comment block) picks the line
    continuation character, as in the classic builder.
    """
    escape = "\\"
    lines = text.splitlines()
    for raw in lines:
        found = _DIRECTIVE.match(raw.strip())
        if not found:
            break
        if found[1].lower() == "escape" and found[2] in ("\\", "`"):
            escape = found[2]
    result: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (pending and not stripped):
            continue  # comments and empty lines inside a continuation are skipped
        if not pending:
            start = number
            raw = raw.lstrip()
        # The builder joins continued lines as they are: the escape character (and blanks
        # after it) go, nothing is added, so "AD\\" + "D url" is "ADD url".
        body = raw.rstrip(" \t")
        if body.endswith(escape):
            pending.append(body[:-1])
            continue
        pending.append(raw)
        _append(result, "".join(pending), start)
        pending = []
    if pending:
        _append(result, "".join(pending), start)
    return result


def _append(result: list[Instruction], joined: str, line: int) -> None:
    joined = joined.strip()
    if joined:
        keyword, *arguments = joined.split(None, 1)
        result.append(Instruction(keyword.upper(), "".join(arguments).strip(), line))


def remote_sources(found: list[Instruction]) -> list[tuple[Instruction, str]]:
    """``ADD`` sources (also under ``ONBUILD``) that make the engine fetch something itself:
    http(s), git or ssh URLs, and sources built from variables, which could expand to one."""
    remote = []
    for instruction in found:
        keyword, arguments = instruction.keyword, instruction.arguments
        if keyword == "ONBUILD" and arguments:
            keyword, *rest = arguments.split(None, 1)
            keyword, arguments = keyword.upper(), "".join(rest)
        if keyword != "ADD":
            continue
        for source in _sources(arguments):
            if _REMOTE_SOURCE.match(source) or "$" in source:
                remote.append((instruction, source))
    return remote


def _sources(arguments: str) -> list[str]:
    words = _words(arguments)
    while words and words[0].startswith("--"):
        words.pop(0)
    return words[:-1]


def _words(arguments: str) -> list[str]:
    if arguments.startswith("["):
        try:
            parsed = json.loads(arguments)
            if isinstance(parsed, list) and all(isinstance(word, str) for word in parsed):
                return parsed
        except ValueError:
            pass
    return arguments.split()


def base_images(found: list[Instruction], build_args: dict[str, str]) -> list[BaseImage]:
    """Every image a build reads: each ``FROM`` that is not an earlier stage, and each
    ``COPY/ADD --from=`` that is neither a stage name nor a stage index.

    ``FROM`` is expanded with the ARGs declared before the first ``FROM`` (their defaults,
    overridden by ``build_args``), as the builder does; an undeclared variable is empty.

    Raises:
        InvalidInputError: a reference that cannot be expanded for certain (422 ``dockerfile``).
    """
    meta: dict[str, str] = {}
    stages: list[str] = []
    images: list[BaseImage] = []
    seen_from = False
    for instruction in found:
        if instruction.keyword == "ARG" and not seen_from:
            for word in instruction.arguments.split():
                name, eq, default = word.partition("=")
                value = build_args.get(name, _unquote(default) if eq else None)
                if value is not None:
                    meta[name] = value
        elif instruction.keyword == "FROM":
            seen_from = True
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            if not words:
                continue
            reference = _expand(words[0], meta, instruction)
            if reference.lower() not in stages:
                images.append(BaseImage(reference, "FROM", instruction.line))
            stages.append(words[2].lower() if len(words) >= 3 and words[1].lower() == "as"
                          else f"#{len(stages)}")
        elif instruction.keyword in ("COPY", "ADD"):
            for word in _words(instruction.arguments):
                if not word.lower().startswith("--from="):
                    continue
                source = _expand(word.split("=", 1)[1], meta, instruction)
                if source.lower() not in stages and not source.isdigit():
                    images.append(BaseImage(source, f"{instruction.keyword} --from",
                                            instruction.line))
    return images


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _expand(word: str, variables: dict[str, str], instruction: Instruction) -> str:
    def one(found: re.Match[str]) -> str:
        name = found[1] or found[4]
        value = variables.get(name)
        if found[2] == ":-":
            return value if value else found[3]
        if found[2] == ":+":
            return found[3] if value else ""
        return value or ""

    expanded = _VARIABLE.sub(one, _unquote(word))
    if "$" in expanded or "\\" in expanded:
        raise InvalidInputError(
            f"line {instruction.line}: cannot expand '{word}' of {instruction.keyword}",
            errors={"dockerfile": [f"line {instruction.line}: use $NAME, ${{NAME}}, "
                                   "${NAME:-default} or ${NAME:+value} only"]})
    return expanded


def dockerfiles_in_context(path: Path, dockerfile_path: str) -> list[str]:
    """The text of every entry of an uploaded context that the builder could read as the
    Dockerfile (``Dockerfile`` falls back to ``dockerfile``, as the builder does).

    Raises:
        InvalidInputError: that entry is a link or not a regular file (422 ``dockerfile_path``).
    """
    wanted = {posixpath.normpath(dockerfile_path)}
    if dockerfile_path == "Dockerfile":
        wanted.add("dockerfile")
    texts = []
    with tarfile.open(path, mode="r:*") as tar:
        for member in tar:
            if posixpath.normpath(member.name.lstrip("/")) not in wanted:
                continue
            if not member.isfile():
                raise InvalidInputError(
                    f"the Dockerfile '{member.name}' in the context is not a regular file",
                    errors={"dockerfile_path": ["must be a regular file in the context"]})
            file = tar.extractfile(member)
            raw = file.read(_DOCKERFILE_LIMIT + 1) if file else b""
            if len(raw) > _DOCKERFILE_LIMIT:
                raise InvalidInputError("the Dockerfile is larger than 1 MiB",
                                        errors={"dockerfile_path": ["larger than 1 MiB"]})
            texts.append(raw.decode("utf-8", "replace"))
    return texts
