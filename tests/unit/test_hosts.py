"""Host URL, TLS and SSH validation, queues per route and the public view of a host."""

from __future__ import annotations

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from app.core.errors import InvalidInputError
from app.fleet.hosts import (
    name_is_valid,
    public_view,
    queues_for,
    validate_ssh,
    validate_tls,
    validate_url,
)
from tests.support.pki import cert_pem, client_tls, key_pem, make_cert

# --------------------------------------------------------------------------- TLS material


@pytest.fixture(scope="module")
def tls() -> dict[str, str]:
    """A CA and a client certificate it signed, with the client's key: what a host needs."""
    return client_tls("unit")


def tls_errors(material: dict[str, str]) -> dict[str, list[str]]:
    with pytest.raises(InvalidInputError) as caught:
        validate_tls(material)
    assert caught.value.status == 422
    return caught.value.extra["errors"]["tls"]


# --------------------------------------------------------------------------- validate_url


@pytest.mark.parametrize("url", ["unix:///var/run/docker.sock", "unix:///work/.state/run/d.sock"])
def test_unix_socket_with_absolute_path_is_accepted(url: str) -> None:
    validate_url(url, has_tls=False)


def test_unix_url_without_path_is_refused() -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_url("unix://", has_tls=False)
    assert "absolute socket path" in caught.value.detail
    assert "url" in caught.value.extra["errors"]


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:2375", "tcp://127.8.9.10:2375",
                                 "tcp://localhost:2375", "tcp://[::1]:2375"])
def test_plain_tcp_on_loopback_is_accepted(url: str) -> None:
    validate_url(url, has_tls=False)


@pytest.mark.parametrize("url", ["tcp://10.0.0.5:2375", "tcp://0.0.0.0:2375",
                                 "tcp://docker.example.com:2375",
                                 "tcp://localhost.example.com:2375"])
def test_plain_tcp_off_loopback_is_refused_and_asks_for_mutual_tls(url: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_url(url, has_tls=False)
    assert caught.value.status == 422
    assert "mutual TLS" in caught.value.detail
    assert "url" in caught.value.extra["errors"]


@pytest.mark.parametrize("url", ["tcp://10.0.0.5:2376", "tcp://docker.example.com:2376"])
def test_tcp_off_loopback_with_tls_is_accepted(url: str) -> None:
    validate_url(url, has_tls=True)


@pytest.mark.parametrize("url", ["tcp://10.0.0.5", "tcp://127.0.0.1", "tcp://:2376",
                                 "tcp://10.0.0.5:99999", "tcp://10.0.0.5:port"])
def test_tcp_without_a_usable_host_and_port_is_refused(url: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_url(url, has_tls=True)
    assert "host and a port" in caught.value.detail
    assert caught.value.extra["errors"]["url"]


def test_tcp_port_zero_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        validate_url("tcp://127.0.0.1:0", has_tls=False)


@pytest.mark.parametrize("url", ["http://127.0.0.1:2375", "https://10.0.0.5:2376",
                                 "npipe:////./pipe/docker_engine", "/var/run/docker.sock",
                                 "docker.example.com:2376", ""])
def test_unsupported_schemes_are_refused_with_422(url: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_url(url, has_tls=True)
    assert caught.value.status == 422
    assert "unsupported scheme" in caught.value.detail
    assert "unix://" in caught.value.detail and "tcp://" in caught.value.detail
    assert caught.value.extra["errors"]["url"] == [caught.value.detail]


@pytest.mark.parametrize("url", ["ssh://deploy@edge-1.example.com", "ssh://root@10.0.0.5:2222",
                                 "ssh://deploy@[2001:db8::5]:22"])
def test_ssh_with_user_and_host_is_accepted_with_ssh_material(url: str) -> None:
    validate_url(url, has_tls=False, has_ssh=True)


def test_ssh_without_ssh_material_is_refused_naming_the_ssh_field() -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_url("ssh://deploy@edge-1.example.com", has_tls=False)
    assert caught.value.status == 422
    assert "ssh {private_key" in caught.value.detail
    assert "ssh" in caught.value.extra["errors"]


@pytest.mark.parametrize(("url", "says"), [
    ("ssh://edge-1.example.com", "need a user and a host"),
    ("ssh://deploy@", "need a user and a host"),
    ("ssh://de ploy@edge-1", "need a user and a host"),
    ("ssh://deploy:hunter2@edge-1", "carry no password"),
    ("ssh://deploy@edge-1/var/run/docker.sock", "no path"),
    ("ssh://deploy@edge-1?x=1", "no path"),
    ("ssh://deploy@edge-1:0", "port from 1 to 65535"),
    ("ssh://deploy@edge-1:99999", "port from 1 to 65535"),
])
def test_malformed_ssh_urls_are_refused_on_the_url_field(url: str, says: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_url(url, has_tls=False, has_ssh=True)
    assert says in caught.value.detail
    assert caught.value.extra["errors"]["url"] == [caught.value.detail]
    assert "hunter2" not in str(caught.value.to_problem())


def test_ssh_url_with_tls_material_is_refused() -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_url("ssh://deploy@edge-1", has_tls=True, has_ssh=True)
    assert "not tls" in caught.value.detail


@pytest.mark.parametrize("url", ["tcp://10.0.0.5:2376", "unix:///var/run/docker.sock"])
def test_ssh_material_on_other_schemes_is_refused_on_the_ssh_field(url: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_url(url, has_tls=True, has_ssh=True)
    assert caught.value.extra["errors"] == {"ssh": ["ssh material only applies to ssh:// URLs"]}


# --------------------------------------------------------------------------- validate_ssh


def ssh_errors(material: dict[str, str | None], url: str = "ssh://root@10.0.0.5") -> dict:
    with pytest.raises(InvalidInputError) as caught:
        validate_ssh(material, url)
    assert caught.value.status == 422
    assert "PRIVATE KEY" not in str(caught.value.to_problem())
    return caught.value.extra["errors"]["ssh"]


def openssh_key(key, password: bytes | None = None) -> str:
    encryption = serialization.BestAvailableEncryption(password) if password \
        else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             encryption).decode()


def known_hosts_line(names: str, key=None) -> str:
    key = key or ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return f"{names} {public}"


@pytest.mark.parametrize("key_text", [
    openssh_key(ed25519.Ed25519PrivateKey.generate()),
    openssh_key(ec.generate_private_key(ec.SECP256R1())),
    key_pem(ec.generate_private_key(ec.SECP384R1())),
    key_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048),
            serialization.PrivateFormat.TraditionalOpenSSL),
    key_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
], ids=["openssh-ed25519", "openssh-ecdsa", "pkcs8-ecdsa", "pkcs1-rsa", "pkcs8-rsa"])
def test_openssh_and_pem_private_keys_parse(key_text: str) -> None:
    validate_ssh({"private_key": key_text, "known_hosts": known_hosts_line("10.0.0.5")},
                 "ssh://root@10.0.0.5")


def test_known_hosts_is_optional() -> None:
    validate_ssh({"private_key": openssh_key(ed25519.Ed25519PrivateKey.generate())},
                 "ssh://root@10.0.0.5")


@pytest.mark.parametrize("key_text", [
    "hunter2",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nbm9wZQ==\n-----END OPENSSH PRIVATE KEY-----\n",
    known_hosts_line("x").split(" ", 1)[1],
], ids=["garbage", "truncated", "public-key"])
def test_a_private_key_that_does_not_parse_is_422_on_private_key(key_text: str) -> None:
    assert ssh_errors({"private_key": key_text}) == {
        "private_key": ["not a private key in OpenSSH or PEM format"]}


def test_short_rsa_keys_are_refused() -> None:
    short = key_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505 (refused)
    assert "2048" in ssh_errors({"private_key": short})["private_key"][0]


def test_encrypted_key_needs_its_passphrase() -> None:
    encrypted = openssh_key(ed25519.Ed25519PrivateKey.generate(), b"s3cret")
    assert ssh_errors({"private_key": encrypted}) == {
        "passphrase": ["the key is encrypted: give its passphrase"]}
    assert ssh_errors({"private_key": encrypted, "passphrase": "wrong"}) == {
        "passphrase": ["does not decrypt the key"]}
    validate_ssh({"private_key": encrypted, "passphrase": "s3cret"}, "ssh://root@10.0.0.5")


def test_encrypted_pem_key_with_its_passphrase_parses() -> None:
    encrypted = key_pem(ec.generate_private_key(ec.SECP256R1()),
                        encryption=serialization.BestAvailableEncryption(b"s3cret"))
    validate_ssh({"private_key": encrypted, "passphrase": "s3cret"}, "ssh://root@10.0.0.5")
    assert set(ssh_errors({"private_key": encrypted})) == {"passphrase"}


def test_a_passphrase_for_a_plain_key_is_refused() -> None:
    plain = openssh_key(ed25519.Ed25519PrivateKey.generate())
    assert set(ssh_errors({"private_key": plain, "passphrase": "s3cret"})) == {"passphrase"}


def test_known_hosts_line_that_does_not_parse_names_its_line() -> None:
    key = openssh_key(ed25519.Ed25519PrivateKey.generate())
    lines = f"# pinned\n{known_hosts_line('10.0.0.5')}\n10.0.0.5 ssh-ed25519 !!notbase64\n"
    errors = ssh_errors({"private_key": key, "known_hosts": lines})
    assert list(errors) == ["known_hosts"] and errors["known_hosts"][0].startswith("line 3:")


def test_known_hosts_without_an_entry_for_the_server_is_refused() -> None:
    key = openssh_key(ed25519.Ed25519PrivateKey.generate())
    errors = ssh_errors({"private_key": key, "known_hosts": known_hosts_line("10.0.0.6")})
    assert errors == {"known_hosts": ["no entry for 10.0.0.5, the server of the url"]}


def test_known_hosts_names_a_non_default_port_in_brackets() -> None:
    key = openssh_key(ed25519.Ed25519PrivateKey.generate())
    url = "ssh://root@10.0.0.5:2222"
    assert "[10.0.0.5]:2222" in ssh_errors(
        {"private_key": key, "known_hosts": known_hosts_line("10.0.0.5")}, url)["known_hosts"][0]
    validate_ssh({"private_key": key, "known_hosts": known_hosts_line("[10.0.0.5]:2222")}, url)


def test_hashed_known_hosts_entries_match() -> None:
    key = openssh_key(ed25519.Ed25519PrivateKey.generate())
    hashed = paramiko.HostKeys.hash_host("10.0.0.5")
    validate_ssh({"private_key": key, "known_hosts": known_hosts_line(hashed)},
                 "ssh://root@10.0.0.5")


# --------------------------------------------------------------------------- validate_tls


def test_well_formed_mutual_tls_material_passes(tls: dict[str, str]) -> None:
    validate_tls(tls)


def test_rsa_key_in_traditional_format_passes() -> None:
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = make_cert("rsa-ca", ca_key, "rsa-ca", ca_key, ca=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = make_cert("rsa-client", key, "rsa-ca", ca_key, ca=False)
    validate_tls({"ca_cert": cert_pem(ca), "client_cert": cert_pem(cert),
                  "client_key": key_pem(key, serialization.PrivateFormat.TraditionalOpenSSL)})


def test_garbage_in_every_field_is_reported_per_field() -> None:
    errors = tls_errors({"ca_cert": "not a cert", "client_cert": "-----BEGIN CERTIFICATE-----\nxx",
                         "client_key": "hunter2"})
    assert set(errors) == {"ca_cert", "client_cert", "client_key"}
    assert errors["ca_cert"] == ["not a PEM certificate"]
    assert errors["client_cert"] == ["not a PEM certificate"]
    assert errors["client_key"] == ["not an unencrypted PEM private key"]


def test_only_the_bad_field_is_reported(tls: dict[str, str]) -> None:
    errors = tls_errors({**tls, "ca_cert": "garbage"})
    assert set(errors) == {"ca_cert"}


def test_a_key_in_the_certificate_field_is_refused(tls: dict[str, str]) -> None:
    errors = tls_errors({**tls, "client_cert": tls["client_key"]})
    assert set(errors) == {"client_cert"}


def test_missing_fields_are_each_required(tls: dict[str, str]) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_tls({"ca_cert": tls["ca_cert"], "client_key": ""})
    assert caught.value.detail == "incomplete TLS material"
    assert set(caught.value.extra["errors"]["tls"]) == {"client_cert", "client_key"}


def test_key_that_does_not_match_the_client_certificate_is_refused(tls: dict[str, str]) -> None:
    other_key = key_pem(ec.generate_private_key(ec.SECP256R1()))
    errors = tls_errors({**tls, "client_key": other_key})
    assert errors == {"client_key": ["does not match client_cert"]}


def test_passphrase_protected_key_is_refused(tls: dict[str, str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert("enc-client", key, "enc-ca", ca_key, ca=False)
    encrypted = key_pem(key, encryption=serialization.BestAvailableEncryption(b"secret"))
    errors = tls_errors({**tls, "client_cert": cert_pem(cert), "client_key": encrypted})
    assert set(errors) == {"client_key"}


def test_validation_errors_never_echo_the_key(tls: dict[str, str]) -> None:
    other_key = key_pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(InvalidInputError) as caught:
        validate_tls({**tls, "client_key": other_key})
    assert "PRIVATE KEY" not in str(caught.value.to_problem())


# --------------------------------------------------------------------------- routes and views


def test_central_hosts_share_the_engine_lanes() -> None:
    assert queues_for({"name": "edge-1", "route": "central"}) == ("engine.ops", "engine.query")
    assert queues_for({"name": "edge-1"}) == ("engine.ops", "engine.query")


def test_agent_hosts_have_their_own_lanes() -> None:
    assert queues_for({"name": "edge-1", "route": "agent"}) == ("host.edge-1.ops",
                                                                "host.edge-1.query")


def test_public_view_shows_only_whether_tls_is_set() -> None:
    record = {"name": "edge-1", "url": "tcp://10.0.0.5:2376", "route": "central", "labels": {},
              "tls": "gAAAAAB-sealed-material", "created_at": "t0", "updated_at": "t1"}
    view = public_view(record, {"last_seen": "t2", "engine_version": "27.0.1"})
    assert view["tls"] is True
    assert "gAAAAAB" not in str(view)
    assert view["engine_version"] == "27.0.1" and view["last_seen"] == "t2"
    assert public_view({**record, "tls": None})["tls"] is False


def test_public_view_shows_only_whether_an_ssh_key_is_set() -> None:
    record = {"name": "edge-2", "url": "ssh://root@10.0.0.5", "route": "central", "labels": {},
              "tls": None, "ssh": "gAAAAAB-sealed-key"}
    view = public_view(record)
    assert view["ssh"] is True and view["tls"] is False
    assert "gAAAAAB" not in str(view)
    assert public_view({**record, "ssh": None})["ssh"] is False
    assert public_view({k: v for k, v in record.items() if k != "ssh"})["ssh"] is False


@pytest.mark.parametrize("name", ["local", "edge-1", "a", "db.eu_west-2", "x" * 63])
def test_valid_host_names(name: str) -> None:
    assert name_is_valid(name)


@pytest.mark.parametrize("name", ["", "Edge", "-edge", ".x", "a b", "x" * 64, "édge", "a/b"])
def test_invalid_host_names(name: str) -> None:
    assert not name_is_valid(name)


def test_host_name_with_trailing_newline_is_invalid() -> None:
    assert not name_is_valid("edge-1\n")
