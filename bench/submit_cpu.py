"""CPU per job submission, in process: no gunicorn, no HTTP client, no other load in the way.

The same code path a submission takes in a gunicorn worker (Flask app with every hook:
token, rate limit, view, validation, the job's Lua script, the Celery publish, the 202
body, the audit entry), driven back to back from Flask's test client, and ``submit_job``
alone (record + publish), each timed with ``time.process_time`` (this process's CPU, all
threads). The jobs go to the benchmark's sink host, whose lane is kept alive by a fake
heartbeat and whose queue is emptied afterwards, as bench/submit.py does.

Use a Redis database nobody else uses: the app writes its admin token, the sink host and
(briefly) the jobs there, and everything the run made is removed at the end.

    source .state/run/env
    DOCKYARD_REDIS_URL=redis://127.0.0.1:6379/10 .venv/bin/python -m bench.submit_cpu [-n 2000]

To compare with another checkout, copy this file into its bench/ and run it there: it
uses only what the checkouts since issue 17's first pass have.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import machine_summary, table
from bench.submit import SINK, Sink


class _TestHttp:
    """What ``Sink`` needs of ``requests.Session``, answered by the in-process app."""

    def __init__(self, client: Any, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def post(self, url: str, json: Any = None, timeout: float = 0) -> Any:
        return _Reply(self.client.post(url, json=json, headers=self.headers))

    def delete(self, url: str, timeout: float = 0) -> Any:
        return _Reply(self.client.delete(url, headers=self.headers))


class _Reply:
    def __init__(self, response: Any) -> None:
        self.status_code = response.status_code
        self.text = response.get_data(as_text=True)


def in_process_sink() -> tuple[Any, _TestHttp, Sink]:
    """The API's Flask app in this process (its test client), an admin's requests to it and
    bench/submit.py's sink host, set up; the caller tears the sink down."""
    import logging

    logging.disable(logging.INFO)  # gunicorn runs the app at INFO: no per-request line either
    from app.factory import create_app
    from app.runtime import runtime

    token = runtime().settings.admin_token
    if not token:
        sys.exit("DOCKYARD_ADMIN_TOKEN (or _FILE) must be set: source .state/run/env")
    client = create_app().test_client()
    http = _TestHttp(client, token)
    sink = Sink(http, "")
    sink.setup()
    return client, http, sink


def _cpu_ms_per_call(call: Any, count: int, rounds: int) -> list[float]:
    """CPU ms per call, one figure per round of ``count`` calls."""
    figures = []
    for _ in range(rounds):
        gc.collect()
        started = time.process_time()
        for _ in range(count):
            call()
        figures.append((time.process_time() - started) * 1000 / count)
    return figures


def _pieces(app: Any, count: int) -> list[list[str]]:
    """The removed costs, measured directly: schema dump + jsonify against the dumped view,
    the audit's parse of a 202 body, gunicorn's access atoms for a dropped line."""
    try:
        from api.services import dumped_job
    except ImportError:  # a checkout before the second pass
        return []
    import datetime
    import importlib.util
    import logging

    from flask import jsonify
    from gunicorn import glogging
    from gunicorn.config import Config

    from app.core.logs import gunicorn_logconfig
    from app.jobs.records import JobStore, public_view
    from schemas.containers import ContainerStateJobSchema

    record = JobStore.new_record(JobStore.__new__(JobStore), "containers.action", SINK, "x",
                                 "admin", "t", f"host.{SINK}.ops")
    schema = ContainerStateJobSchema()

    def us(call: Any) -> float:
        return statistics.median(_cpu_ms_per_call(call, count, 5)) * 1000

    rows = []
    with app.app_context():
        rows.append(["202 body: public_view + schema dump + jsonify / DumpedJob + jsonify",
                     f"{us(lambda: jsonify(schema.dump(public_view(record)))):.0f}",
                     f"{us(lambda: jsonify(schema.dump(dumped_job(record)))):.0f}"])
        answer = jsonify(dumped_job(record))
        answer.status_code = 202
        answer.headers["Location"] = f"/api/v1/jobs/{record['id']}"
        rows.append(["audit: parse the 202 body for its job id / read the Location header",
                     f"{us(lambda: answer.get_json(silent=True)):.0f}",
                     f"{us(lambda: answer.headers.get('Location', '')[13:]):.0f}"])
    config = Config()
    logconfig = gunicorn_logconfig()
    logconfig["loggers"]["gunicorn.access"]["level"] = "WARNING"
    config.set("logconfig_dict", logconfig)
    loud = glogging.Logger(config)
    spec = importlib.util.spec_from_file_location(
        "_dockyard_gunicorn_conf", Path(sys.modules["app"].__file__).resolve().parents[1]
        / "gunicorn.conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    quiet = conf.QuietAccessLogger(config)
    environ = {"REQUEST_METHOD": "POST", "RAW_URI": f"/api/v1/hosts/{SINK}/containers/x/start",
               "PATH_INFO": f"/api/v1/hosts/{SINK}/containers/x/start", "QUERY_STRING": "",
               "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
               "HTTP_AUTHORIZATION": "Bearer x", "HTTP_USER_AGENT": "hey/0.0.1",
               "HTTP_HOST": "127.0.0.1:8000", "wsgi.url_scheme": "http", "SERVER_NAME": "x",
               "SERVER_PORT": "8000", "CONTENT_LENGTH": "0", "HTTP_ACCEPT": "*/*"}

    class _Resp:
        status = "202 ACCEPTED"
        sent = 420
        headers = [("Content-Type", "application/json"), ("Location", "/api/v1/jobs/x"),
                   ("X-Request-ID", "0" * 32), ("Content-Length", "420")]

    class _Req:
        headers = [("HOST", "127.0.0.1:8000"), ("AUTHORIZATION", "Bearer x"),
                   ("USER-AGENT", "hey/0.0.1"), ("ACCEPT", "*/*")]

    took = datetime.timedelta(microseconds=1500)
    rows.append(["gunicorn access line dropped at WARNING: Logger / QuietAccessLogger",
                 f"{us(lambda: loud.access(_Resp, _Req, environ, took)):.0f}",
                 f"{us(lambda: quiet.access(_Resp, _Req, environ, took)):.0f}"])
    logging.disable(logging.INFO)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=1000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from app.jobs.dispatch import submit_job
    from app.runtime import runtime

    client, http, sink = in_process_sink()
    app = client.application
    try:
        url = f"/api/v1/hosts/{SINK}/containers/x/start"
        first = client.post(url, headers=http.headers)
        if first.status_code != 202:
            sys.exit(f"a submission was answered {first.status_code}: {first.get_data()[:300]!r}")
        host_record = runtime().hosts.get(SINK)
        principal = runtime().tokens.authenticate(http.headers["Authorization"])

        def request() -> None:
            response = client.post(url, headers=http.headers)
            if response.status_code != 202:
                raise RuntimeError(f"answered {response.status_code}")

        full = _cpu_ms_per_call(request, 50, 1)  # warm-up
        full = _cpu_ms_per_call(request, args.count, args.rounds)
        sink.drain()
        rows = [["request through the Flask app (test client)", args.count * args.rounds,
                 f"{statistics.median(full):.3f}", f"{min(full):.3f}", f"{max(full):.3f}"]]

        def submit() -> None:
            submit_job("containers.action", principal, host_record=host_record,
                       target="x", args=["x", "start", {}, {}], idempotency=None)

        alone = _cpu_ms_per_call(submit, args.count, args.rounds)
        sink.drain()
        rows.append(["submit_job alone (record + publish)", args.count * args.rounds,
                     f"{statistics.median(alone):.3f}", f"{min(alone):.3f}",
                     f"{max(alone):.3f}"])
        body = json.loads(first.get_data())
        pieces = _pieces(app, args.count * args.rounds)
        print(machine_summary())
        print(f"checkout: {Path(sys.modules['app'].__file__).resolve().parents[1]}; "
              f"{args.rounds} rounds of {args.count} back to back; CPU of this process "
              f"(time.process_time)\n")
        print(table(["what", "calls", "median CPU ms/job", "min", "max"], rows))
        print(f"\n(the 202 answered: kind {body['kind']}, state {body['state']})")
        if pieces:
            print("\nWhat issue 17's second pass removed from each submission, the old way and "
                  "the new way side by side in this process (median of 5 rounds):\n")
            print(table(["piece", "before µs/job", "after µs/job"], pieces))
    finally:
        sink.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
