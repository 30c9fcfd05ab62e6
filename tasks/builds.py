"""Build jobs: ``docker build`` + ``docker tag`` + optional ``docker push``, secrets redacted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker
import requests
from celery import shared_task

from app.core.errors import DockyardError, JobCancelledError
from app.core.task_names import BUILDS_BUILD
from app.engine import builds, images
from app.engine.errors import translate_engine_error
from app.runtime import runtime
from app.security import crypto
from tasks.base import JobContext, JobTask, layer_progress
from tasks.containers import registry_auth


@shared_task(bind=True, base=JobTask, name=BUILDS_BUILD)
def build(self: JobTask, job_id: str, host: str, spec: dict[str, Any],
          context: dict[str, Any]) -> None:
    """Run a build; an uploaded context is deleted once the job is final.

    A worker killed mid-build never reaches the ``finally``, so the redelivered job still
    finds its upload.
    """
    spool = Path(context["spool"]) if context.get("spool") else None
    try:
        self.run_job(job_id, host, lambda job: build_and_push(job, spec, context, spool))
    finally:
        if spool is not None:
            spool.unlink(missing_ok=True)


def build_and_push(job: JobContext, spec: dict[str, Any], context: dict[str, Any],
                   spool: Path | None) -> dict[str, Any]:
    build_args = {name: _unsealed(arg) for name, arg in spec["build_args"].items()}
    redactor = builds.Redactor(value for name, value in build_args.items()
                               if "sealed" in spec["build_args"][name])
    options = builds.BuildOptions(
        tags=spec["tags"], dockerfile=spec["dockerfile_path"], build_args=build_args,
        target=spec["target"], labels=spec["labels"], no_cache=spec["no_cache"],
        pull=spec["pull"])
    steps = [0]

    def on_line(line: str) -> None:
        job.log(redactor.text(line), stream="build")

    def on_step(done: int, total: int, line: str) -> None:
        steps[0] = total
        job.progress(done, total, "steps", redactor.text(line), force=True)

    try:
        with builds.opened_context(spool, context.get("dockerfile"),
                                   spec["dockerfile_path"]) as file:
            image_id = builds.build_image(
                job.client, file if file is not None else context["git"], options,
                on_line, on_step, cancelled=lambda: runtime().jobs.cancel_requested(job.job_id))
        job.progress(steps[0], steps[0], "steps", f"built {image_id}", force=True)
        pushed = _push_all(job, image_id, spec["push"]) if spec["push"] else []
    except JobCancelledError:
        raise
    except Exception as exc:
        raise _redacted(exc, job.host, redactor) from None
    return {"image_id": image_id, "tags": spec["tags"], "pushed": pushed}


def _push_all(job: JobContext, image_id: str, push: dict[str, Any]) -> list[dict[str, str]]:
    pushed = []
    for repository, tag in push["targets"]:
        job.check_cancelled()
        auth = registry_auth(repository, push["registry"])
        result = images.push_image(job.client, image_id, repository, tag, auth,
                                   layer_progress(job))
        job.log(f"pushed {result['ref']} {result['digest']}", stream="push")
        pushed.append({"ref": result["ref"], "digest": result["digest"]})
    return pushed


def _unsealed(arg: dict[str, str]) -> str:
    if "sealed" in arg:
        return crypto.unseal(runtime().settings, arg["sealed"])["value"]
    return arg["value"]


def _redacted(exc: Exception, host: str | None, redactor: builds.Redactor) -> Exception:
    """The error the job reports, with secret build-arg values removed from its message."""
    if isinstance(exc, DockyardError):
        return redactor.error(exc)
    if host is not None and isinstance(exc, docker.errors.DockerException | OSError
                                       | requests.RequestException):
        return redactor.error(translate_engine_error(exc, host))
    return exc
