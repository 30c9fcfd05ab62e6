"""/metrics: requests summed over every gunicorn worker, jobs by kind and state, lanes, queues."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import BUSYBOX, eventually

JOB_ROUTE = "/api/v1/jobs/<string:job_id>"  # the URL rule, never the raw path


def scrape(base: str) -> dict[str, list]:
    """Every sample of a fresh scrape, by sample name (a new connection each time)."""
    response = requests.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, ())
               if all(s.labels.get(k) == v for k, v in labels.items()))


def job_404_count(base: str) -> float:
    return value(scrape(base), "dockyard_http_request_duration_seconds_count",
                 route=JOB_ROUTE, method="GET", status="404")


def workers_with_request_files(stack, state_dir) -> set[str]:
    """Pids of gunicorn workers that wrote request metrics (their own files)."""
    folder = state_dir / "metrics" / f"gunicorn-{stack.procs['api'].pid}"
    return {path.stem.rsplit("_", 1)[-1] for path in folder.glob("histogram_*.db")}


def test_request_latency_is_counted_by_route_and_summed_over_gunicorn_workers(
        stack, admin, state_dir):
    before = job_404_count(stack.url)
    headers = {"Authorization": admin.session.headers["Authorization"]}

    def missing_job(_: int) -> int:
        # A new connection per request, so the kernel spreads them over both workers.
        return requests.get(f"{stack.url}/api/v1/jobs/{uuid.uuid4().hex}", headers=headers,
                            timeout=10).status_code

    sent = 0
    with ThreadPoolExecutor(max_workers=16) as pool:
        for _ in range(20):
            codes = list(pool.map(missing_job, range(32)))
            assert set(codes) == {404}
            sent += len(codes)
            if len(workers_with_request_files(stack, state_dir)) >= 2:
                break
    assert len(workers_with_request_files(stack, state_dir)) >= 2, "one worker served everything"

    # Whichever worker answers a scrape, it reports the requests of both (and counts the
    # scrapes themselves under /metrics, not under the job route).
    totals = {job_404_count(stack.url) - before for _ in range(6)}
    assert totals == {sent}
    samples = scrape(stack.url)
    routes = {s.labels["route"] for s in samples["dockyard_http_request_duration_seconds_count"]}
    assert "/metrics" in routes
    # Labels are URL rules, never raw paths (which would carry job ids and explode cardinality).
    assert all("<" in route for route in routes if route.startswith("/api/v1/jobs/"))


def test_jobs_are_counted_by_kind_and_final_state_with_durations(stack, operator, unique, cleanup):
    base = scrape(stack.url)
    kind = "containers.provision"
    cleanup.append(unique)
    ok = operator.post("/hosts/local/containers", params={"wait": 30},
                       json={"image": BUSYBOX, "name": unique, "command": ["sleep", "60"]})
    assert ok.status_code == 200 and ok.json()["state"] == "succeeded", ok.text
    bad = operator.post("/hosts/local/containers", params={"wait": 30},
                        json={"image": "dockyard-test/absent:" + unique, "name": unique + "-x",
                              "pull": "never"})
    assert bad.status_code == 200 and bad.json()["state"] == "failed", bad.text

    def counted():
        now = scrape(stack.url)
        done = {state: value(now, "dockyard_jobs_total", kind=kind, state=state)
                - value(base, "dockyard_jobs_total", kind=kind, state=state)
                for state in ("succeeded", "failed")}
        return now if done == {"succeeded": 1, "failed": 1} else None

    now = eventually(counted, timeout=10)
    durations = (value(now, "dockyard_job_duration_seconds_count", kind=kind)
                 - value(base, "dockyard_job_duration_seconds_count", kind=kind))
    assert durations == 2
    assert value(now, "dockyard_job_duration_seconds_bucket", kind=kind, le="+Inf") == \
        value(now, "dockyard_job_duration_seconds_count", kind=kind)
    assert value(now, "dockyard_engine_call_duration_seconds_count", host="local") > \
        value(base, "dockyard_engine_call_duration_seconds_count", host="local")


def test_queue_depth_lane_liveness_and_redis_are_reported(stack):
    samples = scrape(stack.url)
    assert value(samples, "dockyard_redis_up") == 1
    for queue in ("engine.ops", "engine.query"):
        assert value(samples, "dockyard_lane_up", queue=queue) == 1
        assert value(samples, "dockyard_lane_workers", queue=queue) >= 1
        assert [s for s in samples["dockyard_queue_depth"] if s.labels["queue"] == queue]


def test_request_id_follows_the_request_into_the_worker_log(stack, operator, unique, cleanup):
    cleanup.append(unique)
    request_id = "it-" + uuid.uuid4().hex
    response = operator.post("/hosts/local/containers", params={"wait": 30},
                             headers={"X-Request-ID": request_id},
                             json={"image": BUSYBOX, "name": unique, "command": ["sleep", "60"]})
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == request_id
    job_id = response.json()["id"]

    def tagged_lines():
        text = (stack.log_dir / "worker-ops.log").read_text(errors="replace")
        return [line for line in text.splitlines() if request_id in line and job_id in line]

    lines = eventually(tagged_lines, timeout=10)
    assert any("succeeded" in line for line in lines)
