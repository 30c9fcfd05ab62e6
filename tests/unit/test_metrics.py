"""Metrics helpers: route labels from URL rules, engine call timing, histogram folding."""

from __future__ import annotations

import os
import sys
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests
from flask import Flask

from app.ops import metrics


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory):
    # Multiprocess mode is chosen when prometheus_client is first imported.
    if "prometheus_client" not in sys.modules and metrics.MULTIPROC_ENV not in os.environ:
        os.environ[metrics.MULTIPROC_ENV] = str(tmp_path_factory.mktemp("prometheus"))
    return metrics.multiprocess_dir()


def _request_counts() -> dict[tuple[str, str, str], float]:
    # This process's own values (the multiprocess sum is covered by the integration test).
    counts = {}
    for family in metrics._http_metrics().duration.collect():
        for sample in family.samples:
            if sample.name == "dockyard_http_request_duration_seconds_count":
                labels = sample.labels
                counts[(labels["route"], labels["method"], labels["status"])] = sample.value
    return counts


def test_requests_are_labelled_by_url_rule_not_raw_path(metrics_dir) -> None:
    app = Flask("t")
    metrics.init_app(app)
    prefix = "/t-" + uuid.uuid4().hex[:8]

    @app.get(prefix + "/things/<name>")
    def thing(name: str):
        return {"name": name}

    client = app.test_client()
    before = _request_counts()
    for name in ("a", "b", "c"):
        assert client.get(f"{prefix}/things/{name}").status_code == 200
    assert client.get(prefix + "/nowhere").status_code == 404
    after = _request_counts()
    rule = (prefix + "/things/<name>", "GET", "200")
    assert after[rule] - before.get(rule, 0) == 3
    assert after[("unmatched", "GET", "404")] - before.get(("unmatched", "GET", "404"), 0) == 1
    assert not any(f"{prefix}/things/a" == route for route, _, _ in after)


def test_engine_calls_are_timed_per_host_once_per_client() -> None:
    client = SimpleNamespace(api=requests.Session())
    metrics.watch_engine_client(client, "edge-1")
    metrics.watch_engine_client(client, "edge-1")
    assert len(client.api.hooks["response"]) == 1
    metrics._engine_calls.clear()
    for hook in client.api.hooks["response"]:
        hook(SimpleNamespace(elapsed=timedelta(milliseconds=12)))
    assert metrics._engine_calls == [("edge-1", 0.012)]
    metrics._engine_calls.clear()


def test_bucket_fields_put_a_value_in_the_first_bucket_that_holds_it() -> None:
    buckets = (0.1, 1.0, 10.0)
    assert metrics._bucket_field("k", 0.05, buckets) == "k|0"
    assert metrics._bucket_field("k", 1.0, buckets) == "k|1"
    assert metrics._bucket_field("k", 99.0, buckets) == "k|3"
    assert metrics._bucket_field("a|b", 5.0, buckets) == "a|b|2"


def test_stored_buckets_fold_into_cumulative_prometheus_buckets() -> None:
    raw = {"containers.provision|0": "2", "containers.provision|2": "1",
           "containers.provision|3": "1", "containers.provision|sum": "25.5",
           "containers.provision|count": "4"}
    [(label, rows, total)] = list(metrics._histograms(raw, (0.1, 1.0, 10.0)))
    assert label == "containers.provision"
    assert rows == [("0.1", 2.0), ("1.0", 2.0), ("10.0", 3.0), ("+Inf", 4.0)]
    assert total == 25.5
