"""Build + push end to end: Dockyard's `POST /builds?wait` vs `docker build` + `docker push`.

Both build the same small Dockerfile (FROM the test busybox, COPY a freshly generated
incompressible payload, one RUN) with the classic builder, `--no-cache` and a per-round build
arg, and push to the same registry on the same engine. Every round and method gets a new
payload, so every push uploads a new multi-megabyte layer. The API's time includes making the
context tar in the client (the CLI tars its directory too) and ends when `?wait` answers with
the finished job; the CLI's time is both commands back to back. Rounds are interleaved and
their order rotates. Images and registry manifests are removed after each timed run, untimed.

    python -m bench.build_push [--rounds 10] [--payload-mib 4]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import docker
import requests

from bench.common import (
    API_URL,
    TEST_IMAGE,
    Samples,
    admin_token,
    assert_loopback,
    docker_host,
    exit_on_sigterm,
    forget_jobs,
    interleaved_rounds,
    machine_summary,
    ms,
    overlap_note,
    percentile,
    ratio,
    table,
    verdict,
)

REGISTRY = os.environ.get("DOCKYARD_BENCH_REGISTRY", "127.0.0.1:5000")
REGISTRY_NAME = os.environ.get("DOCKYARD_BENCH_REGISTRY_NAME", "local")
REPOSITORY = f"{REGISTRY}/bench-build"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKERFILE = f"""FROM {TEST_IMAGE}
ARG ROUND=0
LABEL dockyard.bench=build-push
COPY payload.bin /data/payload.bin
RUN echo "round $ROUND" > /data/round && wc -c /data/payload.bin
"""
TARGET_RATIO = 1.1


class BuildPush:
    def __init__(self, payload_bytes: int) -> None:
        self.payload_bytes = payload_bytes
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {admin_token()}"
        self.docker = docker.DockerClient(base_url=docker_host(), version="auto", timeout=120)
        self.folder = Path(tempfile.mkdtemp(prefix="bench-build-"))
        (self.folder / "Dockerfile").write_text(DOCKERFILE)
        self.job_ids: list[str] = []
        self.refs: list[str] = []
        # Where the API's time goes, per timed call: upload + spool + record, queue, worker.
        self.phases: dict[str, list[float]] = {"ingest": [], "queue": [], "work": [],
                                               "answer": []}
        self.run_id = uuid.uuid4().hex[:6]

    def fresh_payload(self) -> None:
        (self.folder / "payload.bin").write_bytes(os.urandom(self.payload_bytes))

    def ref(self, method: str, index: int) -> str:
        return f"{REPOSITORY}/{method}:{self.run_id}-{index}"

    # Each method builds and pushes ``ref`` and returns its manifest digest.

    def api(self, ref: str, index: int) -> str:
        began = time.time()
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            tar.add(self.folder, arcname=".")
        spec = {"host": "local", "tags": [ref], "no_cache": True,
                "build_args": {"ROUND": str(index)}, "push": {"registry": REGISTRY_NAME}}
        reply = self.http.post(f"{API_URL}/api/v1/builds", params={"wait": 60}, timeout=120,
                               files={"spec": (None, json.dumps(spec), "application/json"),
                                      "context": ("context.tar", context.getvalue(),
                                                  "application/x-tar")})
        job = reply.json()
        if job.get("kind"):
            self.job_ids.append(job["id"])
        if reply.status_code != 200 or job.get("state") != "succeeded":
            raise RuntimeError(f"API build failed: {reply.status_code} {job}")
        created, started, finished = (epoch(job[key]) for key in
                                      ("created_at", "started_at", "finished_at"))
        for phase, seconds in (("ingest", created - began), ("queue", started - created),
                               ("work", finished - started), ("answer", time.time() - finished)):
            self.phases[phase].append(seconds)
        return job["result"]["pushed"][0]["digest"]

    def cli(self, ref: str, index: int) -> str:
        env = {**os.environ, "DOCKER_HOST": docker_host(), "DOCKER_BUILDKIT": "0"}
        for command in (["docker", "build", "-q", "--no-cache", "--build-arg",
                         f"ROUND={index}", "-t", ref, str(self.folder)],
                        ["docker", "push", ref]):
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"{command[1]} failed: {done.stderr.strip()}")
        return self.docker.images.get(ref).attrs["RepoDigests"][0].split("@", 1)[1]

    def timed(self, method: str, index: int) -> float:
        self.fresh_payload()
        ref = self.ref(method, index)
        started = time.perf_counter()
        digest = getattr(self, method)(ref, index)
        elapsed = time.perf_counter() - started
        self.refs.append(ref)
        self.check_and_clean(ref, digest)
        return elapsed

    def check_and_clean(self, ref: str, digest: str) -> None:
        """The registry stores what was reported; then the image and manifest go (untimed)."""
        repository, tag = ref.removeprefix(f"{REGISTRY}/").rsplit(":", 1)
        head = requests.head(f"http://{REGISTRY}/v2/{repository}/manifests/{tag}",
                             headers={"Accept": MANIFEST_V2}, timeout=10)
        if head.headers.get("Docker-Content-Digest") != digest:
            raise RuntimeError(f"{ref}: registry has {head.headers.get('Docker-Content-Digest')}"
                               f", the build reported {digest}")
        requests.delete(f"http://{REGISTRY}/v2/{repository}/manifests/{digest}", timeout=10)
        with contextlib.suppress(docker.errors.APIError):
            self.docker.images.remove(ref, force=True)

    def close(self) -> None:
        for ref in self.refs:
            with contextlib.suppress(docker.errors.APIError):
                self.docker.images.remove(ref, force=True)
        forget_jobs(self.job_ids)
        for path in self.folder.iterdir():
            path.unlink()
        self.folder.rmdir()


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run(rounds: int, payload_mib: float) -> int:
    assert_loopback(API_URL)
    bench = BuildPush(int(payload_mib * 1024 * 1024))
    samples = {"api": Samples("api"), "cli": Samples("cli")}
    counter = iter(range(10**6))
    try:
        print("warm-up: one untimed build + push per method", file=sys.stderr, flush=True)
        for method in samples:
            bench.timed(method, next(counter))
        bench.phases = {phase: [] for phase in bench.phases}  # without the warm-up
        log = interleaved_rounds(rounds, list(samples),
                                 lambda method, _attempt: bench.timed(method, next(counter)),
                                 samples)
    finally:
        bench.close()
    api, cli = samples["api"], samples["cli"]
    print(f"### Build + push: API vs CLI ({rounds} interleaved rounds, {payload_mib:g} MiB "
          f"payload, new layer every run)\n")
    print(f"Machine: {machine_summary()}.\n")
    rows = [(name, len(s.values), ms(s.median), ms(s.pct(90)), ms(min(s.values)),
             ms(max(s.values)), ratio(s.median, cli.median)) for name, s in
            (("`POST /builds?wait=60` (multipart upload)", api),
             ("`docker build` + `docker push` (CLI)", cli))]
    print(table(["method", "n", "median ms", "p90 ms", "min ms", "max ms", "median / CLI"], rows))
    print()
    ok = api.median / cli.median <= TARGET_RATIO
    print(table(["ratio (medians)", "value", "target", "verdict"], [
        ("API / CLI", ratio(api.median, cli.median), f"<= {TARGET_RATIO}x", verdict(ok))]))
    pairs = [a / c for a, c in zip(api.values, cli.values, strict=True)]
    print(f"\nMedian of the per-round ratios (API / CLI of the same round): "
          f"{percentile(pairs, 50):.2f}x.\n")
    print("Where the API's time goes (medians; ingest = client tar + upload + spool + job "
          "record, answer = finished job to `?wait` reply, clocks of this machine):\n")
    print(table(["ingest ms", "queue ms", "worker ms", "answer ms"],
                [[ms(percentile(bench.phases[p], 50)) for p in
                  ("ingest", "queue", "work", "answer")]]))
    print(f"\n{overlap_note(log)}\n")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (each method once)")
    parser.add_argument("--payload-mib", type=float, default=4.0,
                        help="size of the generated file the Dockerfile copies")
    args = parser.parse_args()
    exit_on_sigterm()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return run(args.rounds, args.payload_mib)


if __name__ == "__main__":
    sys.exit(main())
