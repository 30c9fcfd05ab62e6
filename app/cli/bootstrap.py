"""`dockyard-admin`: register the local engine, registry and admin token; print the task key."""

from __future__ import annotations

import argparse
import os
import sys

from app.runtime import runtime
from app.security import signing


def register_local(engine_url: str, registry_url: str | None) -> None:
    """Make host ``local`` and registry ``local`` point at this machine's services."""
    rt = runtime()
    rt.hosts.upsert("local", engine_url, labels={"role": "local"})
    if registry_url:
        rt.registries.upsert("local", registry_url, insecure=registry_url.startswith("http://"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dockyard-admin")
    sub = parser.add_subparsers(dest="command", required=True)
    local = sub.add_parser("register-local", help="register host and registry 'local'")
    local.add_argument("--engine", default=os.environ.get("DOCKYARD_LOCAL_ENGINE",
                                                          "unix:///var/run/docker.sock"))
    local.add_argument("--registry", default=os.environ.get("DOCKYARD_LOCAL_REGISTRY"))
    sub.add_parser("task-verify-key",
                   help="print the public key agents verify task messages with "
                        "(their DOCKYARD_TASK_VERIFY_KEY)")
    args = parser.parse_args(argv)
    if args.command == "task-verify-key":
        print(signing.encode_verify_key(signing.verify_key(runtime().settings)))
    if args.command == "register-local":
        settings = runtime().settings
        if settings.admin_token:
            runtime().tokens.ensure_bootstrap(settings.admin_token)
        register_local(args.engine, args.registry)
        print(f"registered host 'local' ({args.engine})"
              + (f" and registry 'local' ({args.registry})" if args.registry else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
