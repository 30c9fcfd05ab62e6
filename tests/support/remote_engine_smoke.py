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
DOCKERFILE = (
    'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
)
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


def ping(address: str) -> bool:
    """Send one ICMP echo with busybox ping.

    Args:
        address: Address to ping.

    Returns:
        True if a reply came back within a second.
    """
    proc = subprocess.run(
        ["/bin/busybox", "ping", "-c", "1", "-W", "1", address], capture_output=True, check=False
    )
    return proc.returncode == 0


def iptables_snapshot() -> str:
    """Return the root namespace's iptables rules (nat and filter), without counters."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
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


def main() -> int:
    """Run the smoke test.

    Returns:
        Process exit status.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    root_iptables = iptables_snapshot()
    root_links = subprocess.run(
        ["ip", "-o", "link", "show", "docker0"], capture_output=True, text=True
    ).stdout
    engine = RemoteEngine("smoke", STATE_DIR, 7)
    print(f"engine: {engine!r}  netns={engine.netns} veth={engine.host_veth}/{engine.ns_veth}")
    t0 = time.monotonic()
    engine.start()
    start_s = time.monotonic() - t0
    print(f"started in {start_s:.2f}s (api {engine.api_version})")
    dockerd_pid = int(engine.dockerd_pidfile.read_text())
    containerd_pid = int(engine.containerd_pidfile.read_text())
    try:
        cli = engine.client()
        info = cli.info()
        check(
            info["Name"] != "" and info["ID"] != "",
            f"info over mTLS: name={info['Name']} id={info['ID']}",
        )
        key_check = subprocess.run(
            ["stat", "-c", "%a", str(engine.client_key_path)], capture_output=True, text=True
        )
        check(key_check.stdout.strip() == "600", "client key is mode 0600")

        t = time.monotonic()
        build_image(cli)
        check(
            cli.images.get(IMAGE) is not None,
            f"built {IMAGE} in the remote engine ({time.monotonic() - t:.1f}s)",
        )

        container = cli.containers.run(
            IMAGE, ["httpd", "-f", "-p", "80", "-h", "/"], detach=True, ports={"80/tcp": 18080}
        )
        body = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://{engine.address}:18080/etc/hostname", timeout=2
                ) as resp:
                    body = resp.read().decode().strip()
                break
            except OSError:
                time.sleep(0.2)
        check(
            body == container.id[:12],
            f"published port reachable at {engine.address}:18080 (hostname={body!r})",
        )

        ps = subprocess.run(
            ["docker", "ps", "--format", "{{.ID}} {{.Image}} {{.Ports}}"],
            env=engine.cli_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        print("    docker ps ->", ps.stdout.strip() or ps.stderr.strip())
        check(
            ps.returncode == 0 and container.id[:12] in ps.stdout, "docker CLI works with cli_env()"
        )

        wrong_ca = STATE_DIR / "wrong-ca.pem"
        wrong_ca.write_text(wrong_ca_pem())
        bad = docker.DockerClient(
            base_url=f"https://{engine.address}:2376",
            tls=docker.tls.TLSConfig(
                client_cert=(str(engine.client_cert_path), str(engine.client_key_path)),
                ca_cert=str(wrong_ca),
                verify=True,
            ),
            version=engine.api_version,
            timeout=5,
        )
        bad.api.trust_env = False  # else REQUESTS_CA_BUNDLE would replace the CA under test
        try:
            bad.ping()
            err: Exception | None = None
        except requests.exceptions.SSLError as exc:
            err = exc
        check(
            err is not None,
            f"client trusting wrong_ca_pem() fails with SSLError ({str(err)[:90]}...)",
        )

        no_cert = docker.DockerClient(
            base_url=f"https://{engine.address}:2376",
            tls=docker.tls.TLSConfig(ca_cert=str(engine.ca_path), verify=True),
            version=engine.api_version,
            timeout=5,
        )
        no_cert.api.trust_env = False
        try:
            no_cert.ping()
            rejected = False
        except (requests.exceptions.SSLError, requests.exceptions.ConnectionError):
            rejected = True
        check(rejected, "client without a client certificate is rejected (mTLS enforced)")

        check(ping(engine.address), "ping works before link_down()")
        engine.link_down()
        check(not ping(engine.address), "ping fails after link_down()")
        check(not tcp_reachable(engine.address, 2376), "tcp 2376 unreachable after link_down()")
        route = subprocess.run(
            ["ip", "route", "get", engine.address], capture_output=True, text=True
        )
        check(
            "eth0" not in route.stdout,
            f"no leak via default route: {route.stdout.strip() or route.stderr.strip()}",
        )
        engine.link_up()
        check(ping(engine.address), "ping works after link_up()")
        check(cli.ping(), "docker API works after link_up()")

        engine.link_down(silent=True)
        t = time.monotonic()
        check(
            not tcp_reachable(engine.address, 2376, timeout=1.5),
            "silent link_down(): tcp times out",
        )
        check(time.monotonic() - t >= 1.4, "silent link_down() drops packets (connect timed out)")
        engine.link_up()
        check(cli.ping(), "docker API works after silent link_down()/link_up()")
        cli.close()
    finally:
        t0 = time.monotonic()
        engine.stop()
        stop_s = time.monotonic() - t0
        print(f"stopped in {stop_s:.2f}s (with a container still running)")

    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    check(engine.netns not in netns.split(), "netns gone")
    check(not Path(f"/sys/class/net/{engine.host_veth}").exists(), "host veth gone")
    check(not os.path.exists(f"/proc/{dockerd_pid}"), f"dockerd pid {dockerd_pid} gone")
    check(not os.path.exists(f"/proc/{containerd_pid}"), f"containerd pid {containerd_pid} gone")
    leftovers = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(engine.dir) in cmd or str(engine.exec_root) in cmd:
                leftovers.append(f"{p}: {cmd}")
    check(not leftovers, f"no processes of the engine left {leftovers}")
    mounts = Path("/proc/self/mountinfo").read_text()
    check(str(STATE_DIR) not in mounts and str(engine.exec_root) not in mounts, "no mounts left")
    check(not engine.dir.exists() and not engine.exec_root.exists(), f"{engine.dir} removed")
    cg = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{engine.cgroup_parent}")]
    check(not cg, f"no cgroups left {cg}")
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    check("10.213.7." not in routes, "no routes left")
    check(iptables_snapshot() == root_iptables, "root-namespace iptables rules unchanged")
    check(
        subprocess.run(
            ["ip", "-o", "link", "show", "docker0"], capture_output=True, text=True
        ).stdout
        == root_links,
        "root-namespace docker0 unchanged",
    )
    engine.stop()
    check(True, "second stop() is a no-op")
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    print(f"SMOKE OK  start={start_s:.2f}s stop={stop_s:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
