"""Smoke test for tests/support/remote_engine.py: run it as a script, as root."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import docker
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from remote_engine import RemoteEngine, tcp_reachable, wrong_ca_pem

logger = logging.getLogger(__name__)

IMAGE = "dy-busybox:smoke"
DOCKERFILE = 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
STATE_DIR = Path("/tmp/dy-smoke")


def check(cond: bool, what: str) -> None:
    """Print a check result; abort on failure.

    Args:
        cond: Whether the check passed.
        what: Description of the check.

    Raises:
        SystemExit: The check failed.
    """
    print(f"  [{'ok' if cond else 'FAIL'}] {what}", flush=True)
    if not cond:
        raise SystemExit(f"check failed: {what}")


def sh(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its output.

    Args:
        args: Command and arguments.
        env: Environment, if not inherited.

    Returns:
        The completed process.
    """
    return subprocess.run(args, capture_output=True, text=True, env=env, check=False)


def ping(address: str) -> bool:
    """Send one ICMP echo with busybox ping.

    Args:
        address: Address to ping.

    Returns:
        True if a reply came back within a second.
    """
    return sh(["/bin/busybox", "ping", "-c", "1", "-W", "1", address]).returncode == 0


def iptables_snapshot() -> str:
    """Return the root namespace's iptables rules, without comments and counters."""
    out = sh(["iptables-save"]).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("#"))


def build_image(client: docker.DockerClient) -> None:
    """Build the busybox image directly in the engine behind ``client``.

    Args:
        client: Client of the engine to build in.
    """
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy2("/bin/busybox", Path(ctx) / "busybox")
        (Path(ctx) / "Dockerfile").write_text(DOCKERFILE)
        client.images.build(path=ctx, tag=IMAGE, rm=True, forcerm=True)


def tls_client(engine: RemoteEngine, ca: Path, with_cert: bool) -> docker.DockerClient:
    """Build a TLS client for ``engine`` with a CA and client certificate of our choosing.

    Args:
        engine: Engine to talk to.
        ca: CA file to trust.
        with_cert: Present the engine's client certificate.

    Returns:
        The client.
    """
    cert = (str(engine.client_cert_path), str(engine.client_key_path)) if with_cert else None
    client = docker.DockerClient(
        base_url=f"https://{engine.address}:2376",
        tls=docker.tls.TLSConfig(client_cert=cert, ca_cert=str(ca), verify=True),
        version=engine.api_version,
        timeout=5,
    )
    client.api.trust_env = False  # else REQUESTS_CA_BUNDLE would replace the CA under test
    return client


def check_gone(engine: RemoteEngine, pids: list[int]) -> None:
    """Check that nothing of ``engine`` is left on the machine.

    Args:
        engine: A stopped engine.
        pids: Pids of its daemons while it ran.
    """
    check(engine.netns not in sh(["ip", "netns", "list"]).stdout.split(), f"{engine.netns}: netns gone")
    check(not Path(f"/sys/class/net/{engine.host_veth}").exists(), f"{engine.netns}: host veth gone")
    check(not any(running(p) for p in pids), f"{engine.netns}: daemons {pids} gone")
    leftovers = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f"{engine.dir}/" in cmd or f"{engine.exec_root}/" in cmd:
                leftovers.append(f"{p}: {cmd}")
    check(not leftovers, f"{engine.netns}: no processes left {leftovers}")
    mounts = Path("/proc/self/mountinfo").read_text()
    check(
        str(engine.dir) not in mounts and str(engine.exec_root) not in mounts,
        f"{engine.netns}: no mounts left",
    )
    check(not engine.dir.exists() and not engine.exec_root.exists(), f"{engine.netns}: {engine.dir} removed")
    cgroups = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{engine.cgroup_parent}")]
    check(not cgroups, f"{engine.netns}: no cgroups left {cgroups}")
    check(
        f"10.213.{engine.subnet_index}." not in sh(["ip", "route"]).stdout, f"{engine.netns}: no routes left"
    )


def running(pid: int) -> bool:
    """Tell whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def daemon_pids(engine: RemoteEngine) -> list[int]:
    """Return the pids of the engine's dockerd and containerd."""
    return [int(engine.dockerd_pidfile.read_text()), int(engine.containerd_pidfile.read_text())]


def main() -> int:
    """Run the smoke test.

    Returns:
        Process exit status.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    root_iptables = iptables_snapshot()
    root_docker0 = sh(["ip", "-o", "link", "show", "docker0"]).stdout
    engine = RemoteEngine("smoke", STATE_DIR, 7)
    other = RemoteEngine("smoke-b", STATE_DIR, 8)
    print(f"engines: {engine!r} ({engine.host_veth}/{engine.ns_veth}), {other!r}")
    t0 = time.monotonic()
    engine.start()
    start_s = time.monotonic() - t0
    print(f"started in {start_s:.2f}s (api {engine.api_version})")
    other.start()
    pids = daemon_pids(engine)
    other_pids = daemon_pids(other)
    stop_s = 0.0
    try:
        cli = engine.client()
        other_cli = other.client()
        info, other_info = cli.info(), other_cli.info()
        check(bool(info["ID"]), f"info over mTLS: name={info['Name']} id={info['ID']}")
        check(info["ID"] != other_info["ID"], f"engines have distinct IDs (other: {other_info['ID']})")
        check(oct(engine.client_key_path.stat().st_mode & 0o777) == "0o600", "client key is mode 0600")

        t = time.monotonic()
        build_image(other_cli)
        check(True, f"built {IMAGE} in {other.netns} ({time.monotonic() - t:.1f}s)")
        t = time.monotonic()
        engine.load_image_from(other_cli, IMAGE)
        check(
            IMAGE in cli.images.get(IMAGE).tags,
            f"load_image_from() copied it into {engine.netns} ({time.monotonic() - t:.1f}s)",
        )

        container = cli.containers.run(
            IMAGE, ["httpd", "-f", "-p", "80", "-h", "/"], detach=True, ports={"80/tcp": 18080}
        )
        body = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                url = f"http://{engine.address}:18080/etc/hostname"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    body = resp.read().decode().strip()
                break
            except OSError:
                time.sleep(0.2)
        check(
            body == container.id[:12],
            f"published port reachable at {engine.address}:18080 (hostname={body!r})",
        )

        ps = sh(["docker", "ps", "--format", "{{.ID}} {{.Image}} {{.Ports}}"], env=engine.cli_env())
        print("    docker ps ->", ps.stdout.strip() or ps.stderr.strip())
        check(ps.returncode == 0 and container.id[:12] in ps.stdout, "docker CLI works with cli_env()")

        wrong_ca = STATE_DIR / "wrong-ca.pem"
        wrong_ca.write_text(wrong_ca_pem())
        try:
            tls_client(engine, wrong_ca, with_cert=True).ping()
            err = ""
        except requests.exceptions.SSLError as exc:
            err = str(exc)
        check("CERTIFICATE_VERIFY_FAILED" in err, f"wrong_ca_pem() client: SSLError ...{err[-110:]}")
        try:
            tls_client(engine, engine.ca_path, with_cert=False).ping()
            rejected = False
        except (requests.exceptions.SSLError, requests.exceptions.ConnectionError):
            rejected = True
        check(rejected, "client without a client certificate is rejected (mTLS enforced)")

        check(ping(engine.address), "ping works before link_down()")
        engine.link_down()
        check(not ping(engine.address), "ping fails after link_down()")
        t = time.monotonic()
        check(not tcp_reachable(engine.address, 2376, timeout=3), "tcp :2376 refused after link_down()")
        check(time.monotonic() - t < 0.5, "... immediately (No route to host)")
        route = sh(["ip", "route", "get", engine.address])
        check(
            "eth0" not in route.stdout, f"no leak via default route: {(route.stdout + route.stderr).strip()}"
        )
        check(ping(other.address), "other engine unaffected")
        engine.link_up()
        check(ping(engine.address), "ping works after link_up()")
        check(cli.ping(), "docker API works after link_up()")

        engine.link_down(silent=True)
        t = time.monotonic()
        check(not tcp_reachable(engine.address, 2376, timeout=1.5), "silent link_down(): tcp fails")
        check(time.monotonic() - t >= 1.4, "... by timing out (packets dropped)")
        engine.link_up()
        check(cli.ping(), "docker API works after silent link_down()/link_up()")

        # Crash recovery: a fresh object for a name whose engine is still running.
        other_cli.containers.run(IMAGE, ["sleep", "1000"], detach=True, restart_policy={"Name": "always"})
        reborn = RemoteEngine("smoke-b", STATE_DIR, 8)
        reborn.start()
        alive = [p for p in other_pids if running(p)]
        check(not alive, f"start() over a still-running engine killed its daemons {other_pids}")
        check(reborn.client().containers.list(all=True) == [], "restarted engine is fresh (no containers)")
        reborn_pids = daemon_pids(reborn)
        reborn.stop()
        check_gone(reborn, reborn_pids + other_pids)

        cli.close()
        other_cli.close()
    finally:
        t0 = time.monotonic()
        engine.stop()
        stop_s = time.monotonic() - t0
        other.stop()
    print(f"stopped in {stop_s:.2f}s (with a container running)")
    check_gone(engine, pids)
    check(iptables_snapshot() == root_iptables, "root-namespace iptables rules unchanged")
    check(
        sh(["ip", "-o", "link", "show", "docker0"]).stdout == root_docker0, "root-namespace docker0 unchanged"
    )
    engine.stop()
    check(True, "second stop() is a no-op")
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    print(f"SMOKE OK  start={start_s:.2f}s stop={stop_s:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
