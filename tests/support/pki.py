"""Throw-away X.509 material for tests: a CA, client certificates it signs, their keys."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_cert(subject: str, key: CertificateIssuerPrivateKeyTypes, issuer: str,
              issuer_key: CertificateIssuerPrivateKeyTypes, *, ca: bool) -> x509.Certificate:
    """A certificate for ``key``, signed by ``issuer_key``; a CA or a client (clientAuth) one."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: CertificateIssuerPrivateKeyTypes,
            fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
            encryption: serialization.KeySerializationEncryption | None = None) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt,
                             encryption or serialization.NoEncryption()).decode()


def client_tls(name: str = "test") -> dict[str, str]:
    """``{ca_cert, client_cert, client_key}`` as a host registration takes them."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = make_cert(f"{name}-ca", ca_key, f"{name}-ca", ca_key, ca=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = make_cert(f"{name}-client", client_key, f"{name}-ca", ca_key, ca=False)
    return {"ca_cert": cert_pem(ca), "client_cert": cert_pem(client),
            "client_key": key_pem(client_key)}
