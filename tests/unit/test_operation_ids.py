"""Every operation in the OpenAPI document has a stable, unique, meaningful operationId."""

from __future__ import annotations

import re

import pytest

from api.operations import OPERATION_IDS, PREFIX


@pytest.fixture(scope="module")
def openapi(offline_app) -> dict:
    """The document the API serves, built without any service (nothing connects here)."""
    return offline_app.test_client().get("/api/v1/openapi.json").get_json()


def _operations(document: dict) -> dict[tuple[str, str], dict]:
    return {(method.upper(), path.removeprefix(PREFIX)): operation
            for path, item in document["paths"].items()
            for method, operation in item.items()
            if method in ("get", "post", "put", "patch", "delete")}


def test_every_served_operation_has_its_id_from_the_table_and_none_is_left_over(openapi):
    served = _operations(openapi)
    assert {key: op.get("operationId") for key, op in served.items()} == \
        {key: OPERATION_IDS.get(key) for key in served}
    assert set(OPERATION_IDS) == set(served), set(OPERATION_IDS) ^ set(served)


def test_ids_are_unique_camel_case_verbs():
    ids = list(OPERATION_IDS.values())
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)+", op) for op in ids), ids


def test_each_lifecycle_verb_is_its_own_path_with_its_own_body(openapi):
    paths = openapi["paths"]
    base = f"{PREFIX}/hosts/{{host}}/containers/{{ref}}"
    bodies = {}
    for verb in ("start", "stop", "restart", "kill", "pause", "unpause"):
        operation = paths[f"{base}/{verb}"]["post"]
        assert operation["operationId"] == f"{verb}Container"
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        bodies[verb] = schema
    assert f"{base}/{{verb}}" not in paths
    for verb, field in (("stop", "timeout"), ("restart", "timeout"), ("kill", "signal")):
        name = bodies[verb]["$ref"].rsplit("/", 1)[-1]
        assert field in openapi["components"]["schemas"][name]["properties"]
