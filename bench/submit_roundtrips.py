"""Redis round trips per job submission, in process (Flask test client, every hook).

Counts what the API sends to Redis for one ``POST .../containers/x/start`` on the sink host
of bench/submit.py (each ``send_packed_command`` is one round trip: a pipeline or a script
is one, a lone command one), and lists the commands of the last submission.

    source .state/run/env
    DOCKYARD_REDIS_URL=redis://127.0.0.1:6379/10 .venv/bin/python -m bench.submit_roundtrips
"""

from __future__ import annotations

import sys
from typing import Any

import redis.connection

from bench.submit import SINK, Sink
from bench.submit_cpu import _TestHttp


def main() -> int:
    import logging

    logging.disable(logging.INFO)
    from app.factory import create_app
    from app.runtime import runtime

    token = runtime().settings.admin_token
    if not token:
        sys.exit("DOCKYARD_ADMIN_TOKEN (or _FILE) must be set: source .state/run/env")
    app = create_app()
    client = app.test_client()
    http = _TestHttp(client, token)
    sink = Sink(http, "")
    sink.setup()
    sent: list[list[str]] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        chunks = command if isinstance(command, list | tuple) else [command]
        data = b"".join(bytes(c) for c in chunks)
        sent.append([part.split(b"\r\n")[2][:40].decode(errors="replace")
                     for part in data.split(b"\r\n*")])
        return original(self, command, check_health)

    try:
        url = f"/api/v1/hosts/{SINK}/containers/x/start"
        for _ in range(3):  # warm: scripts loaded, caches filled
            assert client.post(url, headers=http.headers).status_code == 202
        redis.connection.AbstractConnection.send_packed_command = counting
        count = 20
        for _ in range(count):
            response = client.post(url, headers=http.headers)
            assert response.status_code == 202, response.get_data()
        redis.connection.AbstractConnection.send_packed_command = original
        trips = len(sent)
        print(f"{trips / count:g} Redis round trips per submission ({trips} for {count})")
        for trip in sent[-(trips // count):]:
            print("  ", " + ".join(trip))
    finally:
        redis.connection.AbstractConnection.send_packed_command = original
        sink.drain()
        sink.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
