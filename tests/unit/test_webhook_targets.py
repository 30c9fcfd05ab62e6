"""Deliveries resolve once, check that address, and connect to it with the URL's name kept."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.integrations.webhook_targets import post_to, resolve_target
from tests.support.pki import cert_pem, key_pem, make_cert


class _Answers:
    """A resolver that answers differently each time it is asked, as a rebinding name does."""

    def __init__(self, *answers: str) -> None:
        self.answers = [[ipaddress.ip_address(a)] for a in answers]
        self.asked = 0

    def __call__(self, _host: str) -> list:
        self.asked += 1
        return self.answers[min(self.asked, len(self.answers)) - 1]


def test_target_is_resolved_once_and_pinned_to_the_address_checked():
    resolver = _Answers("127.0.0.1", "10.0.0.1")
    target = resolve_target("http://rebind.example:8080/hook?x=1", ("127.0.0.1",), resolver)
    assert target is not None and resolver.asked == 1
    assert (target.address, target.host, target.port, target.path) == \
        ("127.0.0.1", "rebind.example", 8080, "/hook?x=1")
    assert target.host_header == "rebind.example:8080"


def test_name_resolving_off_the_allow_list_has_no_target():
    assert resolve_target("http://rebind.example/hook", ("127.0.0.1",),
                          _Answers("10.0.0.1")) is None
    assert resolve_target("http://nowhere.example/hook", ("127.0.0.1",), lambda _h: []) is None
    assert resolve_target("http://user:pw@127.0.0.1/", ("127.0.0.1",), _Answers("127.0.0.1")) \
        is None


def test_name_on_the_allow_list_is_still_pinned_to_one_resolution():
    resolver = _Answers("127.0.0.2", "10.0.0.1")
    target = resolve_target("https://hooks.example/x", ("hooks.example",), resolver)
    assert target is not None and target.address == "127.0.0.2" and resolver.asked == 1
    assert target.host_header == "hooks.example"


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Recorder.seen.append({"host": self.headers["Host"], "path": self.path, "body": body})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[ThreadingHTTPServer]:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_delivery_connects_to_the_pinned_address_and_keeps_the_host_header(http_server):
    port = http_server.server_address[1]
    # The name does not resolve at all: only the pinned address can have been dialled.
    target = resolve_target(f"http://does-not-resolve.invalid:{port}/hook", ("127.0.0.1",),
                            _Answers("127.0.0.1"))
    assert target is not None
    status = post_to(target, b'{"ok":1}', {"Content-Type": "application/json"}, timeout=5)
    assert status == 204
    assert _Recorder.seen == [{"host": f"does-not-resolve.invalid:{port}", "path": "/hook",
                               "body": b'{"ok":1}'}]


def _server_cert(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = make_cert("hooks-ca", ca_key, "hooks-ca", ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    paths[0].write_text(cert_pem(ca))
    paths[1].write_text(cert_pem(cert))
    paths[2].write_text(key_pem(key))
    return paths


def test_https_delivery_sends_the_name_as_sni_and_verifies_the_certificate_for_it(tmp_path):
    ca, cert, key = _server_cert(tmp_path, "hooks.dockyard.test")
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        target = resolve_target(f"https://hooks.dockyard.test:{port}/x", ("127.0.0.1",),
                                _Answers("127.0.0.1"))
        assert post_to(target, b"{}", {}, timeout=5, ca_certs=str(ca)) == 204
        assert names == ["hooks.dockyard.test"]
        assert _Recorder.seen[0]["host"] == f"hooks.dockyard.test:{port}"
        wrong = resolve_target(f"https://other.dockyard.test:{port}/x", ("127.0.0.1",),
                               _Answers("127.0.0.1"))
        with pytest.raises(urllib3.exceptions.HTTPError):
            post_to(wrong, b"{}", {}, timeout=5, ca_certs=str(ca))
        assert len(_Recorder.seen) == 1
    finally:
        server.shutdown()
        server.server_close()
