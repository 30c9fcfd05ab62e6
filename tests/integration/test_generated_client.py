"""A Python client generated from the live OpenAPI document runs a container's whole life.

openapi-python-client drops any operation or schema it cannot map and names functions after
``operationId``; generating from what the API serves, with warnings treated as failures,
and driving the engine through the result is the check that the document is usable.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType

import docker
import pytest

from tests.integration.helpers import BUSYBOX
from tests.support.stack import VENV_BIN, Stack

PACKAGE = "dockyard_generated_client"


@pytest.fixture(scope="module")
def generated(stack: Stack, admin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The package generated from /api/v1/openapi.json, imported."""
    folder = tmp_path_factory.mktemp("generated")
    spec = folder / "openapi.json"
    spec.write_text(admin.get("/openapi.json").text)
    made = subprocess.run(
        [str(VENV_BIN / "openapi-python-client"), "generate", "--path", str(spec),
         "--output-path", str(folder / PACKAGE), "--meta", "none"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"})
    assert made.returncode == 0, made.stdout + made.stderr
    # Anything the generator could not map (an operation, a schema) is reported as a warning.
    assert "WARNING" not in made.stdout + made.stderr and "Unable to" not in made.stdout, \
        made.stdout + made.stderr
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name.partition(".")[0] == PACKAGE]:
            del sys.modules[name]


def test_generated_client_provisions_starts_stops_and_removes_a_container(
        generated: ModuleType, operator, engine: docker.DockerClient, unique: str,
        cleanup: list[str]) -> None:
    from dockyard_generated_client.api.containers import (
        provision_container,
        remove_container,
        start_container,
        stop_container,
    )
    from dockyard_generated_client.api.jobs import get_job
    from dockyard_generated_client.models import (
        ContainerRemovedJob,
        ContainerStateJob,
        ProvisionJob,
        ProvisionResult,
        ProvisionSpec,
        StopArgs,
    )

    token = operator.session.headers["Authorization"].removeprefix("Bearer ")
    client = generated.AuthenticatedClient(base_url=operator.base.removesuffix("/api/v1"),
                                           token=token, raise_on_unexpected_status=True)

    def finished(answer: object, kind: type) -> object:
        assert isinstance(answer, kind), answer
        job = get_job.sync(answer.id, client=client, wait=60)
        assert job.state == "succeeded", job.to_dict()
        return job

    cleanup.append(unique)
    accepted = provision_container.sync(
        "local", client=client,
        body=ProvisionSpec.from_dict({"image": BUSYBOX, "name": unique, "start": False,
                                      "command": ["sleep", "300"]}))
    assert isinstance(accepted, ProvisionJob) and accepted.kind == "containers.provision"
    finished(accepted, ProvisionJob)
    # The operation's own job model parses the result into its typed model.
    typed = ProvisionJob.from_dict(operator.get(f"/jobs/{accepted.id}").json())
    assert isinstance(typed.result, ProvisionResult) and typed.result.name == unique
    container = engine.containers.get(unique)
    assert container.id == typed.result.id and container.status == "created"

    finished(start_container.sync("local", unique, client=client), ContainerStateJob)
    container.reload()
    assert container.status == "running"

    finished(stop_container.sync("local", unique, client=client, body=StopArgs(timeout=1)),
             ContainerStateJob)
    container.reload()
    assert container.status == "exited"

    finished(remove_container.sync("local", unique, client=client), ContainerRemovedJob)
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(unique)
