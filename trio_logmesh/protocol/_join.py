"""The join document: what a host agent needs to dial the driver, and nothing more.

The driver writes it (a file of mode 0600, an environment variable for ``srun``, an ssh
session's stdin) once it listens; the agent reads it.  It holds the driver's address, the run's
token and what pins the driver's certificate: the certificate itself (a self-signed one made
for the run) with its SHA-256 fingerprint, or a CA and the name the certificate must carry.
It is a secret: whoever holds the token may join the run -- it never goes on a command line.
"""

from __future__ import annotations

import hashlib
import json
import ssl

import attrs

from ._link import LINK_TOKEN_SIZE

JOIN_VERSION = 1


class JoinError(ValueError):
    """A join document that cannot be used (malformed, wrong version, missing fields)."""


@attrs.frozen
class JoinInfo:
    """What an agent needs to join a run.

    ``host``/``port``: where the driver listens.  ``token``: the run's secret.  ``cert``: the
    driver's certificate (PEM) to trust, pinned by ``fingerprint`` (SHA-256 of its DER form,
    hex) when it is the run's own self-signed one; ``ca`` (PEM) and ``server_name`` when the
    user brought a certificate signed by a CA.  ``nnodes``: how many hosts the run has;
    ``session``: the run's id (its run directories are named after it).
    """

    host: str
    port: int
    token: bytes = attrs.field(repr=False)
    nnodes: int
    session: str
    cert: str = ""
    fingerprint: str = ""
    ca: str = ""
    server_name: str = ""

    def dumps(self) -> str:
        """The document as one line of JSON."""
        return json.dumps({
            "logmesh_join": JOIN_VERSION, "host": self.host, "port": self.port,
            "token": self.token.hex(), "nnodes": self.nnodes, "session": self.session,
            "cert": self.cert, "fingerprint": self.fingerprint, "ca": self.ca,
            "server_name": self.server_name,
        })

    @classmethod
    def loads(cls, text: str) -> JoinInfo:
        """Parse a document made by :meth:`dumps`.  Raises :class:`JoinError` saying what is
        wrong with it."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise JoinError(f"not a join document (bad JSON: {exc})") from None
        if not isinstance(doc, dict) or "logmesh_join" not in doc:
            raise JoinError("not a join document (no 'logmesh_join' field)")
        if doc["logmesh_join"] != JOIN_VERSION:
            raise JoinError(f"join document version {doc['logmesh_join']!r}; this logmesh "
                            f"reads version {JOIN_VERSION}")
        try:
            token = bytes.fromhex(doc["token"])
            info = cls(host=str(doc["host"]), port=int(doc["port"]), token=token,
                       nnodes=int(doc["nnodes"]), session=str(doc["session"]),
                       cert=str(doc.get("cert", "")), fingerprint=str(doc.get("fingerprint", "")),
                       ca=str(doc.get("ca", "")), server_name=str(doc.get("server_name", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise JoinError(f"bad join document: {exc!r}") from None
        if len(token) != LINK_TOKEN_SIZE:
            raise JoinError(f"bad join document: the token must be {LINK_TOKEN_SIZE} bytes")
        if not 0 < info.port < 65536 or info.nnodes < 1:
            raise JoinError("bad join document: port or nnodes out of range")
        if not (info.cert or info.ca):
            raise JoinError("bad join document: neither a certificate nor a CA to trust")
        if info.cert:
            try:
                der = ssl.PEM_cert_to_DER_cert(info.cert)
            except ValueError:
                raise JoinError("bad join document: its certificate is not PEM") from None
            if info.fingerprint and hashlib.sha256(der).hexdigest() != info.fingerprint.lower():
                raise JoinError("its certificate does not match its fingerprint: the document "
                                "was altered")
        return info
