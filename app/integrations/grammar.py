"""The docker-CLI grammar shared by chat commands and the ``dockyard`` CLI: text → API request.

Kept whole: one table of commands, each with its flags and the builder that turns it into a
request, and the renderer of their answers; splitting syntax from builders would put a
command's flags and its meaning in two files.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote


class GrammarError(ValueError):
    """A command line docker would refuse; the message reads like docker's own."""

    def __init__(self, message: str, usage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage

    def __str__(self) -> str:
        return self.message + (f"\nUsage:  {self.usage}" if self.usage else "")


@dataclass(frozen=True)
class Command:
    """One parsed command: the API request it stands for.

    ``path`` is relative to ``/api/v1``; ``method`` is empty for commands answered locally
    (``help``). ``destructive`` commands need ``--yes`` in chat (``confirmed``).
    """

    name: str
    method: str
    path: str
    query: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    destructive: bool = False
    confirmed: bool = False
    text: str = ""


@dataclass(frozen=True)
class _Flag:
    dest: str
    takes_value: bool = False
    repeat: bool = False
    short: str | None = None
    help: str = ""


def _flags(*specs: tuple[str, _Flag]) -> dict[str, _Flag]:
    return dict(specs)


_YES = ("yes", _Flag("yes", help="confirm a destructive command"))

# name → (usage, minimum positionals, maximum positionals or None, flags, interspersed)
_SYNTAX: dict[str, tuple[str, int, int | None, dict[str, _Flag], bool]] = {
    "ps": ("ps HOST [-a]", 1, 1, _flags(("all", _Flag("all", short="a")),
                                       ("last", _Flag("last", True, short="n"))), True),
    "run": ("run HOST [-d] [-p H:C[/proto]] [-v SRC:DST[:ro]] [-e K=V] [--name N] "
            "[--restart P] [--volumes-from C] IMAGE [CMD...]", 2, None, _flags(
                ("detach", _Flag("detach", short="d")),
                ("publish", _Flag("ports", True, True, short="p")),
                ("volume", _Flag("volumes", True, True, short="v")),
                ("env", _Flag("env", True, True, short="e")),
                ("label", _Flag("labels", True, True, short="l")),
                ("name", _Flag("name", True)),
                ("restart", _Flag("restart", True)),
                ("volumes-from", _Flag("volumes_from", True, True)),
                ("memory", _Flag("memory", True, short="m")),
                ("cpus", _Flag("cpus", True)),
                ("workdir", _Flag("workdir", True, short="w")),
                ("user", _Flag("user", True, short="u")),
                ("replace", _Flag("replace")), _YES), False),
    "logs": ("logs HOST CONTAINER [--tail N] [-t]", 2, 2, _flags(
        ("tail", _Flag("tail", True, short="n")),
        ("timestamps", _Flag("timestamps", short="t"))), True),
    "start": ("start HOST CONTAINER", 2, 2, {}, True),
    "stop": ("stop HOST CONTAINER [-t SECONDS]", 2, 2,
             _flags(("time", _Flag("timeout", True, short="t"))), True),
    "restart": ("restart HOST CONTAINER [-t SECONDS]", 2, 2,
                _flags(("time", _Flag("timeout", True, short="t"))), True),
    "rm": ("rm HOST CONTAINER [-f] [-v] --yes", 2, 2, _flags(
        ("force", _Flag("force", short="f")), ("volumes", _Flag("volumes", short="v")), _YES),
        True),
    "images": ("images HOST [-a]", 1, 1, _flags(("all", _Flag("all", short="a"))), True),
    "pull": ("pull HOST IMAGE [--registry NAME]", 2, 2,
             _flags(("registry", _Flag("registry", True))), True),
    "build": ('build HOST --tag T --dockerfile-inline "FROM ..." [--build-arg K=V] [--no-cache]',
              1, 1, _flags(("tag", _Flag("tags", True, True, short="t")),
                           ("dockerfile-inline", _Flag("dockerfile", True)),
                           ("build-arg", _Flag("build_args", True, True)),
                           ("no-cache", _Flag("no_cache"))), True),
    "backup": ("backup HOST CONTAINER [--compression none|gzip|zstd]", 2, 2,
               _flags(("compression", _Flag("compression", True))), True),
    "restore": ("restore BACKUP [HOST] [--name N] [--yes]", 1, 2,
                _flags(("name", _Flag("name", True)), _YES), True),
    "jobs": ("jobs [--state S] [--host H] [-n N]", 0, 0, _flags(
        ("state", _Flag("state", True)), ("host", _Flag("host", True)),
        ("last", _Flag("limit", True, short="n"))), True),
    "job": ("job ID", 1, 1, {}, True),
    "cancel": ("cancel JOB_ID", 1, 1, {}, True),
    "help": ("help [COMMAND]", 0, 1, {}, True),
}

_SCHEMA_FLAGS = {"ports": "-p, --publish", "volumes": "-v, --volume", "env": "-e, --env",
                 "labels": "-l, --label", "name": "--name", "restart_policy": "--restart",
                 "volumes_from": "--volumes-from", "memory": "-m, --memory", "cpus": "--cpus",
                 "workdir": "-w, --workdir", "user": "-u, --user", "image": "IMAGE",
                 "command": "COMMAND"}


def usage(name: str) -> str:
    return _SYNTAX[name][0]


def help_text(name: str | None = None) -> str:
    """``help`` or ``help COMMAND``."""
    if name:
        if name not in _SYNTAX:
            raise GrammarError(f"'{name}' is not a dockyard command")
        flags = _SYNTAX[name][3]
        lines = [f"Usage:  {usage(name)}"]
        for long, spec in flags.items():
            short = f"-{spec.short}, " if spec.short else "    "
            lines.append(f"  {short}--{long}" + (" value" if spec.takes_value else ""))
        return "\n".join(lines)
    return "Commands (docker syntax, HOST first):\n" + "\n".join(
        f"  {spec[0]}" for spec in _SYNTAX.values())


# The API's own check of a run spec (``ProvisionSpecSchema().load``), handed in by the caller:
# app/ never imports schemas/.
SpecCheck = Callable[[dict[str, Any]], Any]


def parse(text: str | list[str], check_spec: SpecCheck | None = None) -> Command:
    """Parse a command line (a string, or argv) into the API request it stands for.

    ``check_spec``, when given, checks a ``run`` spec early so an error names the flag typed.

    Raises:
        GrammarError: unknown command or flag, missing argument or invalid value.
    """
    try:
        argv = shlex.split(text) if isinstance(text, str) else list(text)
    except ValueError as exc:
        raise GrammarError(f"cannot parse the command line: {exc}") from None
    if argv and argv[0] == "docker":
        argv = argv[1:]
    if not argv or argv[0] in ("--help", "-h"):
        return Command("help", "", "", text=help_text())
    name, rest = argv[0], argv[1:]
    if name not in _SYNTAX:
        raise GrammarError(f"'{name}' is not a dockyard command.\nSee 'help'.")
    _usage, least, most, flags, interspersed = _SYNTAX[name]
    if rest[:1] in (["--help"], ["-h"]):
        return Command("help", "", "", text=help_text(name))
    options, args = _split(name, rest, flags, interspersed)
    _check_count(name, args, least, most)
    command = _BUILDERS[name](args, options)
    if command.name == "run" and check_spec is not None and command.body is not None:
        validate_run_spec(command.body, check_spec)
    return command


def _split(name: str, argv: list[str], flags: dict[str, _Flag],
           interspersed: bool) -> tuple[dict[str, Any], list[str]]:
    """Flags and positionals, the way docker's (cobra/pflag) parser separates them."""
    by_short = {spec.short: long for long, spec in flags.items() if spec.short}
    options: dict[str, Any] = {}
    args: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        index += 1
        if word == "--":
            args.extend(argv[index:])
            break
        if not word.startswith("-") or word == "-":
            args.append(word)
            if not interspersed and len(args) == 2:
                # run: what follows IMAGE is the container's command, flags included.
                args.extend(argv[index:])
                break
            continue
        if word.startswith("--"):
            long, has_value, value = word[2:].partition("=")
            if long not in flags:
                raise GrammarError(f"unknown flag: --{long}\nSee 'help {name}'.", usage(name))
            _take(options, flags[long], value if has_value else None, f"--{long}",
                  argv, index, name)
            if flags[long].takes_value and not has_value:
                index += 1
            continue
        cluster = word[1:]
        for position, letter in enumerate(cluster):
            if letter not in by_short:
                raise GrammarError(f"unknown shorthand flag: '{letter}' in {word}\n"
                                   f"See 'help {name}'.", usage(name))
            spec = flags[by_short[letter]]
            if not spec.takes_value:
                options[spec.dest] = True
                continue
            remainder = cluster[position + 1:].removeprefix("=")
            _take(options, spec, remainder or None, f"'{letter}' in {word}", argv, index, name)
            if not remainder:
                index += 1
            break
    return options, args


def _take(options: dict[str, Any], spec: _Flag, inline: str | None, label: str,
          argv: list[str], index: int, name: str) -> None:
    """Record one flag; a value flag without ``=value`` takes the next word."""
    if not spec.takes_value:
        if inline not in (None, "true", "false"):
            raise GrammarError(f'invalid argument "{inline}" for "{label}" flag: '
                               "strconv.ParseBool: parsing: invalid syntax")
        options[spec.dest] = inline != "false"
        return
    if inline is None:
        if index >= len(argv):
            raise GrammarError(f"flag needs an argument: {label}", usage(name))
        inline = argv[index]
    if spec.repeat:
        options.setdefault(spec.dest, []).append(inline)
    else:
        options[spec.dest] = inline


def _check_count(name: str, args: list[str], least: int, most: int | None) -> None:
    def plural(n: int) -> str:
        return f"{n} argument" + ("" if n == 1 else "s")

    if most is not None and least == most and len(args) != least:
        raise GrammarError(f'"{name}" requires exactly {plural(least)}.\nSee \'help {name}\'.',
                           usage(name))
    if len(args) < least:
        raise GrammarError(f'"{name}" requires at least {plural(least)}.\nSee \'help {name}\'.',
                           usage(name))
    if most is not None and len(args) > most:
        raise GrammarError(f'"{name}" accepts at most {plural(most)}.\nSee \'help {name}\'.',
                           usage(name))


def _seg(value: str) -> str:
    return quote(value, safe="")


def _int_flag(value: str, label: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise GrammarError(f'invalid argument "{value}" for "{label}" flag: '
                           "strconv.ParseInt: parsing: invalid syntax") from None
    if number < 0:
        raise GrammarError(f'invalid argument "{value}" for "{label}" flag: must not be negative')
    return number


def _pairs(values: list[str], label: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GrammarError(f'invalid argument "{item}" for "{label}" flag: '
                               "expected KEY=VALUE")
        out[key] = value
    return out


def restart_policy(value: str) -> dict[str, Any]:
    """``--restart no|always|unless-stopped|on-failure[:N]`` as the API's restart_policy."""
    policy, _, retries = value.partition(":")
    if policy not in ("no", "always", "unless-stopped", "on-failure") or \
            (retries and policy != "on-failure"):
        raise GrammarError(f'invalid argument "{value}" for "--restart" flag: invalid restart '
                           "policy; use no, always, unless-stopped or on-failure[:max-retries]")
    return {"name": policy,
            "maximum_retry_count": _int_flag(retries, "--restart") if retries else 0}


def run_spec(args: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """The provision spec of ``run``: exactly what ``POST /hosts/{host}/containers`` takes."""
    spec: dict[str, Any] = {"image": args[1]}
    if len(args) > 2:
        spec["command"] = args[2:]
    if options.get("name"):
        spec["name"] = options["name"]
    for key in ("ports", "volumes", "volumes_from"):
        if options.get(key):
            spec[key] = options[key]
    if options.get("env"):
        spec["env"] = _pairs(options["env"], "-e, --env")
    if options.get("labels"):
        spec["labels"] = _pairs(options["labels"], "-l, --label")
    if options.get("restart"):
        spec["restart_policy"] = restart_policy(options["restart"])
    for key in ("memory", "workdir", "user"):
        if options.get(key):
            spec[key] = options[key]
    if options.get("cpus"):
        try:
            spec["cpus"] = float(options["cpus"])
        except ValueError:
            raise GrammarError(f'invalid argument "{options["cpus"]}" for "--cpus" flag: '
                               "not a number") from None
    if options.get("replace"):
        spec["replace"] = True
    return spec


def validate_run_spec(spec: dict[str, Any], check_spec: SpecCheck) -> None:
    """Check a spec with the API's own schema, naming the flag like docker would.

    The API validates the same spec again; this only makes the error arrive sooner and
    read like the command line the user typed.
    """
    # Imported here: workers import this module (describe_job) and never load marshmallow.
    from marshmallow import ValidationError

    try:
        check_spec(spec)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_": exc.messages}
        key = sorted(messages)[0]
        detail = _first_message(messages[key])
        label = _SCHEMA_FLAGS.get(key)
        if label is None:
            raise GrammarError(f"invalid {key}: {detail}") from None
        value = spec.get(key)
        if isinstance(messages[key], dict) and isinstance(value, list):
            index = next(iter(messages[key]))
            value = value[index] if isinstance(index, int) and index < len(value) else None
        shown = f' "{value}"' if isinstance(value, str) else ""
        raise GrammarError(f'invalid argument{shown} for "{label}" flag: {detail}') from None


def _first_message(value: Any) -> str:
    while isinstance(value, dict | list):
        if not value:
            return "invalid value"
        value = next(iter(value.values())) if isinstance(value, dict) else value[0]
    return str(value)


def _container(args: list[str]) -> str:
    return f"/hosts/{_seg(args[0])}/containers/{_seg(args[1])}"


def _ps(args: list[str], options: dict[str, Any]) -> Command:
    query: dict[str, Any] = {"all": "true"} if options.get("all") else {}
    if options.get("last"):
        query["limit"] = _int_flag(options["last"], "-n, --last")
    return Command("ps", "GET", f"/hosts/{_seg(args[0])}/containers", query=query)


def _run(args: list[str], options: dict[str, Any]) -> Command:
    return Command("run", "POST", f"/hosts/{_seg(args[0])}/containers",
                   body=run_spec(args, options), confirmed=bool(options.get("yes")),
                   destructive=bool(options.get("replace")))


def _logs(args: list[str], options: dict[str, Any]) -> Command:
    query: dict[str, Any] = {}
    if options.get("tail") is not None:
        tail = options["tail"]
        query["tail"] = tail if tail == "all" else str(_int_flag(tail, "-n, --tail"))
    if options.get("timestamps"):
        query["timestamps"] = "true"
    return Command("logs", "GET", _container(args) + "/logs", query=query)


def _action(verb: str):
    def build(args: list[str], options: dict[str, Any]) -> Command:
        body: dict[str, Any] = {}
        if options.get("timeout") is not None:
            body["timeout"] = _int_flag(options["timeout"], "-t, --time")
        return Command(verb, "POST", f"{_container(args)}/{verb}", body=body)

    return build


def _rm(args: list[str], options: dict[str, Any]) -> Command:
    query = {key: "true" for key in ("force", "volumes") if options.get(key)}
    return Command("rm", "DELETE", _container(args), query=query, destructive=True,
                   confirmed=bool(options.get("yes")))


def _images(args: list[str], options: dict[str, Any]) -> Command:
    query = {"all": "true"} if options.get("all") else {}
    return Command("images", "GET", f"/hosts/{_seg(args[0])}/images", query=query)


def _pull(args: list[str], options: dict[str, Any]) -> Command:
    body: dict[str, Any] = {"image": args[1]}
    if options.get("registry"):
        body["registry"] = options["registry"]
    return Command("pull", "POST", f"/hosts/{_seg(args[0])}/images/pull", body=body)


def _build(args: list[str], options: dict[str, Any]) -> Command:
    if not options.get("dockerfile"):
        raise GrammarError('"build" needs --dockerfile-inline "FROM ..." (a context upload is '
                           "not possible from a command line; use POST /builds)", usage("build"))
    body: dict[str, Any] = {"host": args[0], "tags": options.get("tags", []),
                            "dockerfile": options["dockerfile"]}
    if options.get("build_args"):
        body["build_args"] = _pairs(options["build_args"], "--build-arg")
    if options.get("no_cache"):
        body["no_cache"] = True
    return Command("build", "POST", "/builds", body=body)


def _backup(args: list[str], options: dict[str, Any]) -> Command:
    body = {"compression": options["compression"]} if options.get("compression") else {}
    return Command("backup", "POST", _container(args) + "/backups", body=body)


def _restore(args: list[str], options: dict[str, Any]) -> Command:
    # Replacing a container of the same name is what --yes confirms; without it the API
    # refuses (409) to restore over an existing name.
    confirmed = bool(options.get("yes"))
    body: dict[str, Any] = {"replace": confirmed}
    if len(args) > 1:
        body["host"] = args[1]
    if options.get("name"):
        body["name"] = options["name"]
    return Command("restore", "POST", f"/backups/{_seg(args[0])}/restore", body=body,
                   destructive=confirmed, confirmed=confirmed)


def _jobs(args: list[str], options: dict[str, Any]) -> Command:
    query: dict[str, Any] = {"limit": _int_flag(options.get("limit") or "10", "-n, --last")}
    for key in ("state", "host"):
        if options.get(key):
            query[key] = options[key]
    return Command("jobs", "GET", "/jobs", query=query)


def _job(args: list[str], options: dict[str, Any]) -> Command:
    return Command("job", "GET", f"/jobs/{_seg(args[0])}")


def _cancel(args: list[str], options: dict[str, Any]) -> Command:
    return Command("cancel", "POST", f"/jobs/{_seg(args[0])}/cancel")


def _help(args: list[str], options: dict[str, Any]) -> Command:
    return Command("help", "", "", text=help_text(args[0] if args else None))


_BUILDERS = {"ps": _ps, "run": _run, "logs": _logs, "start": _action("start"),
             "stop": _action("stop"), "restart": _action("restart"), "rm": _rm,
             "images": _images, "pull": _pull, "build": _build, "backup": _backup,
             "restore": _restore, "jobs": _jobs, "job": _job, "cancel": _cancel, "help": _help}


# -- answers as text ------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = ["   ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
             .rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def _ports(ports: list[dict[str, Any]]) -> str:
    shown = []
    for port in ports or []:
        if port.get("host_port"):
            shown.append(f"{port.get('host_ip') or '0.0.0.0'}:"  # noqa: S104 (text docker prints)
                         f"{port['host_port']}->"
                         f"{port['container_port']}/{port.get('protocol') or 'tcp'}")
        else:
            shown.append(f"{port['container_port']}/{port.get('protocol') or 'tcp'}")
    return ", ".join(dict.fromkeys(shown))


def _size(value: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{value:.3g}TB"


def describe_job(job: dict[str, Any]) -> str:
    """One line (two with an error) saying what a job is and how it ended."""
    where = f" on {job['host']}" if job.get("host") else ""
    target = f" {job['target']}" if job.get("target") else ""
    line = f"job {job['id']} {job['kind']}{target}{where}: {job['state']}"
    result = job.get("result") or {}
    if job["state"] == "succeeded" and isinstance(result, dict):
        if result.get("id") and result.get("name"):
            line += f" — container {result['name']} {str(result['id'])[:12]}"
            if result.get("ports"):
                line += f" ({_ports(result['ports'])})"
        elif result.get("image_id"):
            line += f" — image {str(result['image_id'])[:19]}"
    if job.get("error"):
        line += f"\n{job['error'].get('title', 'error')}: {job['error'].get('detail', '')}"
    return line


def render(command: Command, payload: Any) -> str:
    """The answer to a command as a terminal (or chat code block) would show it."""
    if command.name == "ps":
        return _table(["CONTAINER ID", "IMAGE", "STATUS", "PORTS", "NAMES"],
                      [[c["id"][:12], c["image"], c["status"], _ports(c["ports"]), c["name"]]
                       for c in payload])
    if command.name == "images":
        rows = []
        for image in payload:
            for ref in image.get("repo_tags") or ["<none>:<none>"]:
                repository, _, tag = ref.rpartition(":")
                rows.append([repository, tag, image["id"].removeprefix("sha256:")[:12],
                             _size(image.get("size") or 0)])
        return _table(["REPOSITORY", "TAG", "IMAGE ID", "SIZE"], rows)
    if command.name == "logs":
        return payload if isinstance(payload, str) else str(payload)
    if command.name == "jobs":
        return _table(["JOB", "KIND", "HOST", "TARGET", "STATE"],
                      [[j["id"], j["kind"], j.get("host") or "", j.get("target") or "", j["state"]]
                       for j in payload.get("items", [])])
    if isinstance(payload, dict) and "kind" in payload and "state" in payload:
        return describe_job(payload)
    return str(payload)
