"""A queued job's 202 is sent without the schema pass: the bytes must be the schema's own."""

from __future__ import annotations

import pytest
from flask import Flask, jsonify

from api.services import DumpedJob, dumped_job
from app.jobs import records as jobstates
from app.jobs.records import JobStore
from schemas.backups import BackupJobSchema, RestoreJobSchema
from schemas.common import JobSchema
from schemas.containers import ContainerStateJobSchema, ExecJobSchema, ProvisionJobSchema
from schemas.fleet import PlacedProvisionJobSchema
from schemas.images import PullJobSchema
from schemas.transfers import LoadJobSchema

_store = JobStore.__new__(JobStore)  # new_record touches no Redis


def _record(kind: str, **kwargs):
    base = {"host": "local", "target": "web", "requested_by": "admin", "token_id": "t1",
            "queue": "engine.ops"}
    base.update(kwargs)
    return _store.new_record(kind, base["host"], base["target"], base["requested_by"],
                             base["token_id"], base["queue"], parent=base.get("parent"),
                             spool=base.get("spool"))


CASES = [
    (ProvisionJobSchema, _record("containers.provision")),
    (ContainerStateJobSchema, _record("containers.action", target="abc123")),
    (ExecJobSchema, _record("containers.exec", parent="01HZZZZZZZZZZZZZZZZZZZZZZZ")),
    (PullJobSchema, _record("images.pull", target="127.0.0.1:5000/x:latest")),
    (BackupJobSchema, _record("backups.create", target=None)),
    (RestoreJobSchema, _record("backups.restore", host=None, requested_by="op ünïcode")),
    (LoadJobSchema, _record("transfers.load", target=None,
                            spool="/tmp/state/spool/upload-1.tar")),
    (PlacedProvisionJobSchema, {**_record("containers.provision.fanout", host=None),
                                "children": ["01A", "01B"], "cancel_requested": "1"}),
    (JobSchema, {**_record("volumes.create"), "state": jobstates.RUNNING,
                 "started_at": "2026-12-01T00:00:00.000000Z"}),
]


@pytest.fixture()
def app_context():
    app = Flask("test")
    with app.app_context():
        yield app


@pytest.mark.parametrize(("schema", "record"), CASES, ids=[c[1]["kind"] for c in CASES])
def test_dumped_job_is_what_the_schema_dumps_byte_for_byte(app_context, schema, record):
    dumped = dumped_job(record)
    assert isinstance(dumped, DumpedJob)
    by_schema = schema().dump(jobstates.public_view(record))
    assert dumped == by_schema
    assert jsonify(dumped).get_data() == jsonify(by_schema).get_data()
    # The schema passes a DumpedJob through as it is (what flask-smorest then sends).
    assert schema().dump(dumped) is dumped


@pytest.mark.parametrize("field, value", [
    ("progress", {"done": 1, "total": 2, "unit": "B", "extra": "dropped by the schema"}),
    ("result", {"id": "abc"}),
    ("error", {"type": "about:blank", "title": "x", "status": 409}),
    ("children", "not a list"),
])
def test_a_job_with_more_than_its_record_goes_through_the_schema(field, value):
    assert dumped_job({**_record("containers.provision"), field: value}) is None
