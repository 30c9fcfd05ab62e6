"""Registry routes agree with what the registries themselves answer (plain, htpasswd, TLS)."""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import io
import ipaddress
import json
import socket
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import docker
import pytest
import redis
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.helpers import (
    BUSYBOX,
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    eventually,
    free_port,
)
from tests.support.pki import cert_pem, key_pem, make_cert

LOCAL_REGISTRY = "127.0.0.1:5000"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CREDENTIALS = (REGISTRY_USER, REGISTRY_PASSWORD)


def direct(address: str, path: str, *, scheme: str = "http", verify: bool | str = False,
           auth: tuple[str, str] | None = None, method: str = "GET", **kwargs
           ) -> requests.Response:
    """Ask a registry itself, outside Dockyard (the oracle the API is compared with)."""
    session = requests.Session()
    session.trust_env = False
    return session.request(method, f"{scheme}://{address}{path}", verify=verify, auth=auth,
                           timeout=10, **kwargs)


def registry_digest(address: str, repository: str, tag: str, **kwargs) -> requests.Response:
    return direct(address, f"/v2/{repository}/manifests/{tag}", method="HEAD",
                  headers={"Accept": MANIFEST_V2}, **kwargs)


class Pushed:
    """Repositories a test pushed; their manifests are deleted from the registry afterwards."""

    def __init__(self, engine: docker.DockerClient) -> None:
        self.engine = engine
        self.manifests: list[tuple[str, str, tuple[str, str] | None]] = []

    def push(self, address: str, repository: str, tag: str,
             auth: tuple[str, str] | None = None) -> str:
        """``docker tag busybox address/repository:tag && docker push``; the stored digest."""
        target = f"{address}/{repository}"
        self.engine.images.get(BUSYBOX).tag(target, tag)
        try:
            auth_config = {"username": auth[0], "password": auth[1]} if auth else None
            for line in self.engine.images.push(target, tag, auth_config=auth_config,
                                                stream=True, decode=True):
                assert "error" not in line, line
        finally:
            self.engine.images.remove(f"{target}:{tag}")
        head = registry_digest(address, repository, tag, auth=auth)
        assert head.status_code == 200, head.status_code
        self.manifests.append((address, repository, auth))
        return head.headers["Docker-Content-Digest"]

    def remove_everything(self) -> None:
        for address, repository, auth in self.manifests:
            tags = direct(address, f"/v2/{repository}/tags/list", auth=auth)
            for tag in (tags.json().get("tags") or []) if tags.status_code == 200 else []:
                head = registry_digest(address, repository, tag, auth=auth)
                if head.status_code == 200:
                    direct(address, f"/v2/{repository}/manifests/"
                           f"{head.headers['Docker-Content-Digest']}", method="DELETE", auth=auth)


@pytest.fixture
def pushed(engine) -> Iterator[Pushed]:
    made = Pushed(engine)
    yield made
    made.remove_everything()


@pytest.fixture
def repo() -> str:
    return f"dyt-reg-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def registries(admin) -> Iterator[list[str]]:
    """Names of registry records a test made; deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        admin.delete(f"/registries/{name}")


@pytest.fixture
def register(admin, registries):
    def make(url: str, **fields) -> str:
        name = f"reg-{uuid.uuid4().hex[:8]}"
        created = admin.post("/registries", json={"name": name, "url": url, **fields})
        assert created.status_code == 201, created.text
        registries.append(name)
        return name

    return make


# -- a TLS registry whose certificate a private CA signed ----------------------------------


def server_certificate(ca, ca_key, address: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


class TlsRegistry:
    def __init__(self, address: str, ca_pem: str, ca_file: Path) -> None:
        self.address = address
        self.ca_pem = ca_pem
        self.ca_file = str(ca_file)

    def get(self, path: str, **kwargs) -> requests.Response:
        return direct(self.address, path, scheme="https", verify=self.ca_file, **kwargs)


@pytest.fixture(scope="session")
def tls_registry(state_dir: Path) -> Iterator[TlsRegistry]:
    """Distribution over TLS on loopback, deletes disabled (so a delete answers 405)."""
    folder = state_dir / f"tlsreg-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = make_cert("dyt-registry-ca", ca_key, "dyt-registry-ca", ca_key, ca=True)
    cert, key = server_certificate(ca, ca_key, "127.0.0.1")
    (folder / "ca.pem").write_text(cert_pem(ca))
    (folder / "server.pem").write_text(cert_pem(cert))
    (folder / "server.key").write_text(key_pem(key))
    port = free_port()
    (folder / "config.yml").write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {folder}/data}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}, tls: {{certificate: {folder}/server.pem, "
        f"key: {folder}/server.key}}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(folder / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    registry = TlsRegistry(f"127.0.0.1:{port}", cert_pem(ca), folder / "ca.pem")

    def answers() -> bool:
        try:
            return registry.get("/v2/").status_code == 200
        except requests.RequestException:
            return False

    eventually(answers, timeout=20)
    yield registry
    proc.terminate()
    proc.wait(10)


def upload_image(base: str, repository: str, tag: str, *, verify: bool | str = False,
                 headers: dict[str, str] | None = None) -> str:
    """Put a one-layer image into a registry over its v2 API; the manifest digest.

    The engine under test does not trust private CAs or tokens minted here, so it cannot
    push to those registries itself.
    """
    session = requests.Session()
    session.trust_env = False
    session.verify = verify
    session.headers.update(headers or {})
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as tar:
        data = f"{repository}:{tag}\n".encode()
        info = tarfile.TarInfo("marker")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(layer_tar.getvalue())
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [
                             "sha256:" + hashlib.sha256(layer_tar.getvalue()).hexdigest()]}
                         }).encode()
    blobs = []
    for blob in (config, layer):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        start = session.post(f"{base}/v2/{repository}/blobs/uploads/", timeout=10)
        assert start.status_code == 202, start.text
        done = session.put(urljoin(base + "/", start.headers["Location"]),
                           params={"digest": digest}, data=blob, timeout=10,
                           headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
        blobs.append({"size": len(blob), "digest": digest})
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_V2,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           **blobs[0]},
                "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                            **blobs[1]}]}
    put = session.put(f"{base}/v2/{repository}/manifests/{tag}", data=json.dumps(manifest),
                      headers={"Content-Type": MANIFEST_V2}, timeout=10)
    assert put.status_code == 201, put.text
    return put.headers["Docker-Content-Digest"]


def upload_tls(registry: TlsRegistry, repository: str, tag: str) -> str:
    return upload_image(f"https://{registry.address}", repository, tag, verify=registry.ca_file)


# -- a registry behind a token service (the Bearer flow of Docker Hub and Harbor) ----------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """Issues ES256 JWTs the registry trusts (x5c = the CA that is its rootcertbundle)."""

    def __init__(self, service: str, issuer: str) -> None:
        self.service = service
        self.issuer = issuer
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.ca = make_cert(issuer, self.key, issuer, self.key, ca=True)
        self.requests: list[dict] = []

    def mint(self, subject: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256",
                  "x5c": [base64.b64encode(self.ca.public_bytes(Encoding.DER)).decode()]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(),
                                                  ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                service.requests.append({k: v[0] for k, v in query.items()})
                expected = "Basic " + base64.b64encode(
                    f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    body = json.dumps({"details": "incorrect username or password"}).encode()
                    self.send_response(401)
                else:
                    token = service.mint(REGISTRY_USER, query.get("scope", []))
                    body = json.dumps({"token": token}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        return Handler


@pytest.fixture(scope="session")
def token_registry(state_dir: Path) -> Iterator[tuple[str, TokenService]]:
    """Distribution with ``auth: token`` and the token service it sends clients to."""
    folder = state_dir / f"tokenreg-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    tokens = TokenService("dyt-registry", "dyt-token-issuer")
    (folder / "issuer.pem").write_text(cert_pem(tokens.ca))
    server = ThreadingHTTPServer(("127.0.0.1", 0), tokens.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    (folder / "config.yml").write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {folder}/data}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
        f"auth: {{token: {{realm: 'http://127.0.0.1:{server.server_address[1]}/token', "
        f"service: {tokens.service}, issuer: {tokens.issuer}, "
        f"rootcertbundle: {folder}/issuer.pem}}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(folder / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"

    def challenges() -> bool:
        try:
            return direct(address, "/v2/").status_code == 401
        except requests.RequestException:
            return False

    eventually(challenges, timeout=20)
    yield address, tokens
    proc.terminate()
    proc.wait(10)
    server.shutdown()


# -- records --------------------------------------------------------------------------------


def test_registry_record_keeps_ca_and_never_returns_the_password(admin, viewer, registries,
                                                                 tls_registry):
    name = f"reg-{uuid.uuid4().hex[:8]}"
    secret = "pw-" + uuid.uuid4().hex
    created = admin.post("/registries", json={
        "name": name, "url": f"https://{tls_registry.address}", "username": "someone",
        "password": secret, "ca_cert": tls_registry.ca_pem})
    assert created.status_code == 201, created.text
    registries.append(name)
    assert created.json()["has_password"] is True
    assert created.json()["ca_cert"] == tls_registry.ca_pem
    assert "password" not in created.json()
    for response in (created, viewer.get(f"/registries/{name}"), viewer.get("/registries")):
        assert response.status_code == 200 or response.status_code == 201
        assert secret not in response.text


def test_patch_changes_only_the_given_fields_and_null_clears(admin, register, auth_registry):
    name = register(f"http://{auth_registry}", username=REGISTRY_USER, password="old-pw")
    patched = admin.patch(f"/registries/{name}", json={"password": REGISTRY_PASSWORD,
                                                       "insecure": True})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["url"], body["username"], body["has_password"], body["insecure"]) == (
        f"http://{auth_registry}", REGISTRY_USER, True, True)
    assert body["updated_at"]
    assert REGISTRY_PASSWORD not in patched.text
    cleared = admin.patch(f"/registries/{name}", json={"username": None})
    assert cleared.status_code == 200, cleared.text
    assert (cleared.json()["username"], cleared.json()["has_password"]) == (None, False)
    assert admin.patch("/registries/no-such-registry", json={"insecure": True}
                       ).status_code == 404


def test_bad_ca_cert_url_and_lonely_password_are_422(admin, register):
    bad_ca = admin.post("/registries", json={"name": f"reg-{uuid.uuid4().hex[:8]}",
                                             "url": "https://127.0.0.1:5443",
                                             "ca_cert": "-----BEGIN CERTIFICATE-----\nnope\n"})
    assert bad_ca.status_code == 422, bad_ca.text
    assert "ca_cert" in bad_ca.json()["errors"]
    name = register(f"http://{LOCAL_REGISTRY}")
    assert admin.patch(f"/registries/{name}", json={"ca_cert": "not pem"}).status_code == 422
    assert admin.patch(f"/registries/{name}", json={"url": "ftp://x"}).status_code == 422
    assert admin.patch(f"/registries/{name}", json={"password": "x"}).status_code == 422
    assert admin.patch(f"/registries/{name}", json={"insecure": "maybe"}).status_code == 422


def test_viewer_cannot_change_or_check_and_operator_cannot_change(viewer, operator, register):
    name = register(f"http://{LOCAL_REGISTRY}")
    assert viewer.patch(f"/registries/{name}", json={"insecure": True}).status_code == 403
    assert viewer.delete(f"/registries/{name}").status_code == 403
    assert viewer.post(f"/registries/{name}/check").status_code == 403
    assert operator.patch(f"/registries/{name}", json={"insecure": True}).status_code == 403
    assert viewer.delete(f"/registries/{name}/repositories/x/manifests/latest"
                         ).status_code == 403
    assert viewer.get(f"/registries/{name}").status_code == 200


def test_unknown_registry_is_404_everywhere(admin, operator, viewer):
    assert viewer.get("/registries/no-such-registry").status_code == 404
    assert operator.post("/registries/no-such-registry/check").status_code == 404
    assert viewer.get("/registries/no-such-registry/repositories").status_code == 404
    assert viewer.get("/registries/no-such-registry/repositories/a/b/tags").status_code == 404
    assert admin.delete("/registries/no-such-registry/repositories/a/manifests/latest"
                        ).status_code == 404
    assert admin.delete("/registries/no-such-registry").status_code == 404


# -- check (docker login) ---------------------------------------------------------------


def test_check_with_right_credentials_logs_in_with_basic(operator, register, auth_registry):
    name = register(f"http://{auth_registry}", username=REGISTRY_USER, password=REGISTRY_PASSWORD)
    checked = operator.post(f"/registries/{name}/check")
    assert checked.status_code == 200, checked.text
    assert checked.json() == {"ok": True, "status": 200, "auth": "basic"}


def test_check_without_auth_on_an_open_registry_says_none(operator):
    checked = operator.post("/registries/local/check")
    assert checked.status_code == 200, checked.text
    assert checked.json() == {"ok": True, "status": 200, "auth": "none"}


def test_check_with_wrong_credentials_is_502_with_the_registry_reason(admin, operator, register,
                                                                      auth_registry):
    wrong = "wrong-" + uuid.uuid4().hex
    name = register(f"http://{auth_registry}", username=REGISTRY_USER, password=wrong)
    checked = operator.post(f"/registries/{name}/check")
    assert checked.status_code == 502, checked.text
    problem = checked.json()
    assert checked.headers["Content-Type"] == "application/problem+json"
    assert "UNAUTHORIZED" in problem["detail"] and "authentication required" in problem["detail"]
    assert REGISTRY_USER in problem["detail"]
    assert wrong not in checked.text
    # the same record with the right password (PATCH) logs in
    assert admin.patch(f"/registries/{name}", json={"password": REGISTRY_PASSWORD}
                       ).status_code == 200
    assert operator.post(f"/registries/{name}/check").json()["auth"] == "basic"
    # and without credentials the registry's challenge is reported as such
    assert admin.patch(f"/registries/{name}", json={"username": None}).status_code == 200
    anonymous = operator.post(f"/registries/{name}/check")
    assert anonymous.status_code == 502
    assert "requires credentials" in anonymous.json()["detail"]


def test_check_of_an_unreachable_registry_is_503_fast(operator, register):
    name = register(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    checked = operator.post(f"/registries/{name}/check")
    assert checked.status_code == 503, checked.text
    assert "unreachable" in checked.json()["detail"]
    assert time.monotonic() - started < 5


def test_check_of_a_registry_that_never_answers_is_503_within_the_bound(operator, register):
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        name = register(f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        checked = operator.post(f"/registries/{name}/check")
        elapsed = time.monotonic() - started
    assert checked.status_code == 503, checked.text
    assert "did not answer" in checked.json()["detail"]
    assert elapsed < 15


def test_tls_registry_with_its_ca_checks_ok_and_without_it_fails_verification(
        operator, viewer, register, tls_registry, repo):
    with_ca = register(f"https://{tls_registry.address}", ca_cert=tls_registry.ca_pem)
    checked = operator.post(f"/registries/{with_ca}/check")
    assert checked.status_code == 200, checked.text
    assert checked.json() == {"ok": True, "status": 200, "auth": "none"}
    upload_tls(tls_registry, repo, "v1")
    listed = viewer.get(f"/registries/{with_ca}/repositories", params={"n": 1000})
    assert listed.status_code == 200, listed.text
    assert repo in listed.json()["repositories"]
    assert listed.json()["repositories"] == tls_registry.get(
        "/v2/_catalog", params={"n": 1000}).json()["repositories"]
    tags = viewer.get(f"/registries/{with_ca}/repositories/{repo}/tags")
    assert tags.status_code == 200, tags.text
    assert tags.json()["tags"] == ["v1"]

    without_ca = register(f"https://{tls_registry.address}")
    failed = operator.post(f"/registries/{without_ca}/check")
    assert failed.status_code == 502, failed.text
    assert "certificate verification failed" in failed.json()["detail"]
    assert viewer.get(f"/registries/{without_ca}/repositories").status_code == 502
    # insecure (as docker's insecure-registries) skips verification instead
    unverified = register(f"https://{tls_registry.address}", insecure=True)
    assert operator.post(f"/registries/{unverified}/check").status_code == 200


def test_manifest_delete_on_a_registry_without_delete_enabled_is_409(admin, register,
                                                                     tls_registry, repo):
    name = register(f"https://{tls_registry.address}", ca_cert=tls_registry.ca_pem)
    digest = upload_tls(tls_registry, repo, "v1")
    refused = admin.delete(f"/registries/{name}/repositories/{repo}/manifests/v1")
    assert refused.status_code == 409, refused.text
    assert "UNSUPPORTED" in refused.json()["detail"]
    assert "storage.delete" in refused.json()["detail"]
    head = tls_registry.get(f"/v2/{repo}/manifests/{digest}", method="HEAD",
                            headers={"Accept": MANIFEST_V2})
    assert head.status_code == 200


def test_bearer_registry_logs_in_lists_and_deletes_through_the_token_service(
        admin, operator, viewer, register, token_registry, repo):
    address, tokens = token_registry
    push = tokens.mint("tester", [f"repository:{repo}/app:pull,push,delete"])
    digest = upload_image(f"http://{address}", f"{repo}/app", "v1",
                          headers={"Authorization": f"Bearer {push}"})
    name = register(f"http://{address}", username=REGISTRY_USER, password=REGISTRY_PASSWORD)
    checked = operator.post(f"/registries/{name}/check")
    assert checked.status_code == 200, checked.text
    assert checked.json() == {"ok": True, "status": 200, "auth": "bearer"}
    assert tokens.requests[-1]["service"] == tokens.service
    assert tokens.requests[-1]["account"] == REGISTRY_USER

    listed = viewer.get(f"/registries/{name}/repositories")
    assert listed.status_code == 200, listed.text
    assert f"{repo}/app" in listed.json()["repositories"]
    assert tokens.requests[-1]["scope"] == "registry:catalog:*"
    tags = viewer.get(f"/registries/{name}/repositories/{repo}/app/tags")
    assert tags.status_code == 200, tags.text
    assert tags.json()["tags"] == ["v1"]

    deleted = admin.delete(f"/registries/{name}/repositories/{repo}/app/manifests/v1")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["digest"] == digest
    gone = direct(address, f"/v2/{repo}/app/manifests/{digest}", method="HEAD",
                  headers={"Authorization": f"Bearer {push}", "Accept": MANIFEST_V2})
    assert gone.status_code == 404

    wrong = "wrong-" + uuid.uuid4().hex
    assert admin.patch(f"/registries/{name}", json={"password": wrong}).status_code == 200
    refused = operator.post(f"/registries/{name}/check")
    assert refused.status_code == 502, refused.text
    assert "token service" in refused.json()["detail"]
    assert "incorrect username or password" in refused.json()["detail"]
    assert wrong not in refused.text


# -- catalog, tags, manifests -----------------------------------------------------------


def test_catalog_lists_a_pushed_repository_like_the_registry_does(viewer, pushed, repo):
    pushed.push(LOCAL_REGISTRY, f"{repo}/app", "v1")

    def oracle() -> set[str]:
        return set(direct(LOCAL_REGISTRY, "/v2/_catalog", params={"n": 1000}
                          ).json()["repositories"])

    # other sessions push and delete concurrently: bracket our read with the registry's
    before = oracle()
    listed = viewer.get("/registries/local/repositories", params={"n": 1000})
    after = oracle()
    assert listed.status_code == 200, listed.text
    repositories = listed.json()["repositories"]
    assert f"{repo}/app" in repositories
    assert before & after <= set(repositories) <= before | after
    assert repositories == sorted(repositories)


def test_pagination_with_n_1_walks_every_repository_via_next(viewer, register, pushed,
                                                             auth_registry, repo):
    name = register(f"http://{auth_registry}", username=REGISTRY_USER, password=REGISTRY_PASSWORD)
    for suffix in ("a", "b", "c"):
        pushed.push(auth_registry, f"{repo}/{suffix}", "v1", auth=CREDENTIALS)
    oracle = direct(auth_registry, "/v2/_catalog", auth=CREDENTIALS).json()["repositories"]
    walked: list[str] = []
    params: dict = {"n": 1}
    for _ in range(len(oracle) + 2):
        page = viewer.get(f"/registries/{name}/repositories", params=params)
        assert page.status_code == 200, page.text
        assert len(page.json()["repositories"]) <= 1
        walked += page.json()["repositories"]
        following = page.json()["next"]
        if following is None:
            assert page.json()["next_url"] is None
            break
        assert following["n"] == 1
        assert page.json()["next_url"].startswith(f"/api/v1/registries/{name}/repositories?")
        params = {"n": following["n"], "last": following["last"]}
    assert walked == oracle
    assert {f"{repo}/a", f"{repo}/b", f"{repo}/c"} <= set(walked)
    # next_url is this API's own link to the following page
    first = viewer.get(f"/registries/{name}/repositories", params={"n": 1}).json()
    follow = viewer.session.get(viewer.base.removesuffix("/api/v1") + first["next_url"],
                                timeout=30)
    assert follow.status_code == 200, follow.text
    assert follow.json()["repositories"] == oracle[1:2]


def test_tags_of_a_slashed_repository_equal_the_registry_list(viewer, pushed, repo):
    repository = f"{repo}/team/web"
    for tag in ("v1", "v2", "latest"):
        pushed.push(LOCAL_REGISTRY, repository, tag)
    tags = viewer.get(f"/registries/local/repositories/{repository}/tags")
    assert tags.status_code == 200, tags.text
    oracle = direct(LOCAL_REGISTRY, f"/v2/{repository}/tags/list").json()
    assert tags.json()["name"] == oracle["name"] == repository
    assert sorted(tags.json()["tags"]) == sorted(oracle["tags"]) == ["latest", "v1", "v2"]
    assert tags.json()["next"] is None
    # Distribution 2.8 ignores n for tags; Dockyard pages lexically as Distribution 3 does
    walked: list[str] = []
    params: dict = {"n": 2}
    for _ in range(3):
        paged = viewer.get(f"/registries/local/repositories/{repository}/tags", params=params)
        assert paged.status_code == 200, paged.text
        assert len(paged.json()["tags"]) <= 2
        walked += paged.json()["tags"]
        if paged.json()["next"] is None:
            break
        params = paged.json()["next"]
    assert walked == sorted(oracle["tags"])


def test_tags_of_an_unknown_repository_is_404_and_a_bad_name_422(viewer, repo):
    missing = viewer.get(f"/registries/local/repositories/{repo}/nothing/tags")
    assert missing.status_code == 404, missing.text
    assert "NAME_UNKNOWN" in missing.json()["detail"]
    assert viewer.get("/registries/local/repositories/Bad..Name/tags").status_code == 422


def test_delete_manifest_by_tag_resolves_the_digest_and_removes_it(admin, pushed, repo):
    repository = f"{repo}/app"
    digest = pushed.push(LOCAL_REGISTRY, repository, "v1")
    deleted = admin.delete(f"/registries/local/repositories/{repository}/manifests/v1")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"repository": repository, "reference": "v1", "digest": digest}
    assert registry_digest(LOCAL_REGISTRY, repository, digest).status_code == 404
    assert registry_digest(LOCAL_REGISTRY, repository, "v1").status_code == 404


def test_delete_manifest_by_digest_removes_it_and_again_is_404(admin, viewer, pushed, repo):
    repository = f"{repo}/app"
    digest = pushed.push(LOCAL_REGISTRY, repository, "v1")
    deleted = admin.delete(f"/registries/local/repositories/{repository}/manifests/{digest}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["digest"] == digest
    assert registry_digest(LOCAL_REGISTRY, repository, digest).status_code == 404
    again = admin.delete(f"/registries/local/repositories/{repository}/manifests/{digest}")
    assert again.status_code == 404, again.text
    unknown_tag = admin.delete(f"/registries/local/repositories/{repository}/manifests/nope")
    assert unknown_tag.status_code == 404, unknown_tag.text
    assert admin.delete(f"/registries/local/repositories/{repository}/manifests/sha256:zz"
                        ).status_code == 422


def test_delete_manifest_on_an_htpasswd_registry_authenticates(admin, register, pushed,
                                                               auth_registry, repo):
    name = register(f"http://{auth_registry}", username=REGISTRY_USER, password=REGISTRY_PASSWORD)
    digest = pushed.push(auth_registry, f"{repo}/app", "v1", auth=CREDENTIALS)
    deleted = admin.delete(f"/registries/{name}/repositories/{repo}/app/manifests/v1")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["digest"] == digest
    assert registry_digest(auth_registry, f"{repo}/app", digest, auth=CREDENTIALS
                           ).status_code == 404


# -- secrets ------------------------------------------------------------------------------


def test_passwords_are_nowhere_in_redis_or_the_logs(admin, operator, viewer, register,
                                                    auth_registry, test_redis: redis.Redis,
                                                    state_dir: Path):
    secret = "never-shown-" + uuid.uuid4().hex
    name = register(f"http://{auth_registry}", username=REGISTRY_USER, password=secret)
    responses = [operator.post(f"/registries/{name}/check"),
                 viewer.get(f"/registries/{name}/repositories"),
                 viewer.get(f"/registries/{name}"), viewer.get("/registries"),
                 admin.patch(f"/registries/{name}", json={"insecure": True})]
    assert [r.status_code for r in responses] == [502, 502, 200, 200, 200]
    for response in responses:
        assert secret not in response.text
    # bytes, not text: some keys (pipes) hold binary data
    kwargs = test_redis.connection_pool.connection_kwargs
    raw = redis.Redis(**{key: kwargs[key] for key in ("host", "port", "db", "username", "password")
                         if key in kwargs}, decode_responses=False)
    needle = secret.encode()
    for key in raw.scan_iter(b"*"):
        kind = raw.type(key)
        values: list[bytes] = []
        if kind == b"string":
            values = [raw.get(key) or b""]
        elif kind == b"hash":
            values = list(raw.hvals(key))
        elif kind == b"list":
            values = raw.lrange(key, 0, -1)
        elif kind == b"stream":
            values = [b"".join(v for field in fields.items() for v in field)
                      for _id, fields in raw.xrange(key)]
        elif kind == b"zset":
            values = raw.zrange(key, 0, -1)
        assert not any(needle in value for value in values), key
    for log in (state_dir / "log").glob("*.log"):
        assert secret not in log.read_text(errors="replace"), log


def test_registry_delete_forgets_it(admin, viewer):
    name = f"reg-{uuid.uuid4().hex[:8]}"
    assert admin.post("/registries", json={"name": name, "url": "http://127.0.0.1:1"}
                      ).status_code == 201
    assert admin.delete(f"/registries/{name}").status_code == 204
    assert viewer.get(f"/registries/{name}").status_code == 404
