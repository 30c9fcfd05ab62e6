"""Redis round trips per job submission, in process (Flask test client, every hook).

Counts what the API sends to Redis for one submission on the sink host of bench/submit.py,
for one job route of each kind (each ``send_packed_command`` is one round trip: a pipeline
or a script is one, a lone command one), and lists the commands of the last submission.

    source .state/run/env
    DOCKYARD_REDIS_URL=redis://127.0.0.1:6379/10 .venv/bin/python -m bench.submit_roundtrips
"""

from __future__ import annotations

import sys
from typing import Any

import redis.connection

from bench.submit import SINK
from bench.submit_cpu import in_process_sink

# (label, method, path under the sink host, JSON body)
ROUTES = [
    ("container start", "POST", "containers/x/start", None),
    ("container commit", "POST", "containers/x/commit", {"repository": "bench/commit"}),
    ("image tag", "POST", "images/busybox:latest/tag", {"repository": "bench/tagged"}),
    ("image prune", "POST", "images/prune", {}),
    ("image rm", "DELETE", "images/bench/gone:1", None),
    ("volume prune", "POST", "volumes/prune", {}),
    ("volume rm", "DELETE", "volumes/bench-gone", None),
]


def main() -> int:
    client, http, sink = in_process_sink()
    sent: list[list[str]] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        chunks = command if isinstance(command, list | tuple) else [command]
        data = b"".join(bytes(c) for c in chunks)
        sent.append([part.split(b"\r\n")[2][:40].decode(errors="replace")
                     for part in data.split(b"\r\n*")])
        return original(self, command, check_health)

    try:
        for label, method, path, body in ROUTES:
            url = f"/api/v1/hosts/{SINK}/{path}"

            def submit(url: str = url, method: str = method, body: Any = body) -> None:
                response = client.open(url, method=method, headers=http.headers, json=body)
                assert response.status_code == 202, response.get_data()

            for _ in range(3):  # warm: scripts loaded, caches filled
                submit()
            sent.clear()
            redis.connection.AbstractConnection.send_packed_command = counting
            count = 20
            for _ in range(count):
                submit()
            redis.connection.AbstractConnection.send_packed_command = original
            trips = len(sent)
            print(f"{label}: {trips / count:g} Redis round trips per submission "
                  f"({trips} for {count})")
            for trip in sent[-(trips // count):]:
                print("  ", " + ".join(trip))
            sink.drain()
    finally:
        redis.connection.AbstractConnection.send_packed_command = original
        sink.drain()
        sink.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
