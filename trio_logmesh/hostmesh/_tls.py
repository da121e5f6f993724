"""The driver's TLS: a self-signed certificate made for each run, or the user's own.

Agents pin the run's certificate: the join document carries it (and its SHA-256 fingerprint),
and an agent trusts nothing else.  TLS 1.3 only.  The key never touches a disk unprotected: it
is written to a private (0700) directory only for the moment ``load_cert_chain`` reads it.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import shutil
import ssl
import tempfile

import attrs


@attrs.frozen
class ServerIdentity:
    """The driver's certificate and key (PEM), and what agents trust: the certificate itself
    (``ca`` empty) or a CA (``ca`` PEM, with ``server_name`` to check)."""

    cert: str
    key: str = attrs.field(repr=False)
    ca: str = ""
    server_name: str = ""

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate's DER form, hex ("" with a CA: the CA is what agents
        trust then)."""
        if self.ca:
            return ""
        return cert_fingerprint(self.cert)


def cert_fingerprint(pem: str) -> str:
    """SHA-256 of a PEM certificate's DER form, hex."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def make_self_signed(names: list[str], days: float = 7.0) -> ServerIdentity:
    """A fresh self-signed certificate (EC P-256) for ``names`` (host names or addresses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "logmesh driver")])
    alt: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return ServerIdentity(
        cert=cert.public_bytes(serialization.Encoding.PEM).decode(),
        key=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode(),
    )


def load_identity(cert_path: str, key_path: str, ca_path: str | None,
                  server_name: str = "") -> ServerIdentity:
    """The user's certificate, key and (optional) CA from files.  Without a CA, agents pin
    the certificate itself.  Raises ``OSError`` for a file that cannot be read and
    ``ValueError`` for one that is not PEM."""
    with open(cert_path) as fh:
        cert = fh.read()
    with open(key_path) as fh:
        key = fh.read()
    ca = ""
    if ca_path:
        with open(ca_path) as fh:
            ca = fh.read()
    if "-----BEGIN CERTIFICATE-----" not in cert or (ca and "-----BEGIN CERTIFICATE-----"
                                                      not in ca):
        raise ValueError("the certificate and the CA must be PEM files")
    server_context(ServerIdentity(cert, key))  # the key matches the certificate
    return ServerIdentity(cert, key, ca, server_name)


def server_context(identity: ServerIdentity) -> ssl.SSLContext:
    """The driver's TLS 1.3 server context for ``identity``.  Raises ``ssl.SSLError`` when the
    key does not match the certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    tmp = tempfile.mkdtemp(prefix="logmesh-tls-")  # 0700
    try:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        for path, text in ((cert_path, identity.cert), (key_path, identity.key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        ctx.load_cert_chain(cert_path, key_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ctx
