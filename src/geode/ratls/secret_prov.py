"""Secret provisioning, client side, with Gramine's wire protocol and variables.

Inside mutual TLS (the server shows a CA-issued certificate, the client its RA-TLS one):

1. client -> ``b"SECRET_PROVISION_RA_TLS_REQUEST_V1\\0"`` (35 bytes);
2. server -> ``b"SECRET_PROVISION_RA_TLS_RESPONSE_V1:\\0"`` (37 bytes), the secret's length
   as an unsigned 32-bit big-endian integer, then the secret.

A program that provisions itself (inside the shield)::

    from geode.ratls.secret_prov import provision
    secret = provision(servers="localhost:4433", ca_chain_path="/ca/ca.crt")

:func:`provision` makes a fresh RA-TLS certificate from ``/dev/attestation`` (or the
``source`` given) and tries the servers in order. :func:`apply` does what Gramine's
constructor does with the result (``SECRET_PROVISION_SET_KEY`` /
``SECRET_PROVISION_SECRET_STRING``). Geode's supervisor runs the same client before the
program starts when the manifest sets ``SECRET_PROVISION_CONSTRUCTOR`` (see
:mod:`geode.runtime.provision`). Only the standard library, ``cryptography`` and ``cbor2``
are imported.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from geode.errors import GeodeError
from geode.ratls.cert import Credentials, EvidenceSource, create, dev_attestation_source

REQUEST = b"SECRET_PROVISION_RA_TLS_REQUEST_V1\0"
RESPONSE = b"SECRET_PROVISION_RA_TLS_RESPONSE_V1:\0"
assert len(REQUEST) == 35 and len(RESPONSE) == 37
#: Gramine allows up to INT_MAX; a client refuses more than this (memory bound)
MAX_SECRET = 64 * 1024 * 1024
DEFAULT_SERVERS = "localhost:4433"
DEFAULT_PORT = 4433
#: key size of /dev/attestation/keys/NAME
KEY_SIZE = 16
#: a SECRET_PROVISION_SECRET_STRING value is at most this long (Gramine's limit)
MAX_SECRET_STRING = 4096

ENV_SERVERS = "SECRET_PROVISION_SERVERS"
ENV_CA_CHAIN = "SECRET_PROVISION_CA_CHAIN_PATH"
ENV_CONSTRUCTOR = "SECRET_PROVISION_CONSTRUCTOR"
ENV_SET_KEY = "SECRET_PROVISION_SET_KEY"
ENV_SECRET_STRING = "SECRET_PROVISION_SECRET_STRING"


def parse_servers(text: str | None) -> list[tuple[str, int]]:
    """``host:port`` entries separated by ``,``, ``;`` or spaces (default localhost:4433)."""
    out: list[tuple[str, int]] = []
    for item in re.split(r"[,; ]+", (text or DEFAULT_SERVERS).strip()):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, str(DEFAULT_PORT)
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise GeodeError(f"{ENV_SERVERS}: {item!r} is not HOST:PORT")
        out.append((host, int(port)))
    if not out:
        raise GeodeError(f"{ENV_SERVERS} names no server")
    return out


def is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true")


def client_context(creds: Credentials, ca_pem: bytes) -> ssl.SSLContext:
    """TLS client context: the RA-TLS credentials, the server checked against ``ca_pem``."""
    from geode.ratls.tls import load_credentials

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
    except ssl.SSLError as e:
        raise GeodeError(f"the CA chain is not PEM certificates: {e}") from None
    load_credentials(ctx, creds.cert_pem(), creds.key_pem())
    return ctx


def _recv_exact(conn: ssl.SSLSocket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = conn.recv(min(size - len(buf), 1 << 20))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def request_secret(conn: ssl.SSLSocket) -> bytes:
    """Run the protocol on an established connection; the secret."""
    conn.sendall(REQUEST)
    head = _recv_exact(conn, len(RESPONSE) + 4)
    if len(head) < len(RESPONSE) + 4:
        raise GeodeError("the server closed the connection without a secret (refused?)")
    if head[:len(RESPONSE)] != RESPONSE:
        raise GeodeError("the server's response is not SECRET_PROVISION_RA_TLS_RESPONSE_V1")
    (size,) = struct.unpack(">I", head[len(RESPONSE):])
    if size > MAX_SECRET:
        raise GeodeError(f"the server announced a {size}-byte secret (limit {MAX_SECRET})")
    secret = _recv_exact(conn, size)
    if len(secret) != size:
        raise GeodeError("the connection closed in the middle of the secret")
    return secret


@dataclass
class Provisioned:
    secret: bytes
    server: str


def provision_with(creds: Credentials, ca_pem: bytes, servers: list[tuple[str, int]], *,
                   timeout: float = 30.0) -> Provisioned:
    """Get the secret from the first server that gives it, with existing credentials."""
    ctx = client_context(creds, ca_pem)
    errors: list[str] = []
    for host, port in servers:
        where = f"{host}:{port}"
        try:
            with socket.create_connection((host, port), timeout=timeout) as raw:
                # small messages right after the handshake: no Nagle/delayed-ACK stall
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with ctx.wrap_socket(raw, server_hostname=host) as conn:
                    return Provisioned(request_secret(conn), where)
        except (OSError, GeodeError) as e:
            reason = e.message if isinstance(e, GeodeError) else (
                getattr(e, "reason", None) or e.strerror or str(e))
            errors.append(f"{where}: {reason}")
    raise GeodeError("secret provisioning failed: " + "; ".join(errors))


def provision(*, servers: str | None = None, ca_chain_path: str | None = None,
              ca_pem: bytes | None = None, source: EvidenceSource | None = None,
              timeout: float = 30.0) -> bytes:
    """A program's own provisioning: fresh RA-TLS credentials from ``source`` (default:
    ``/dev/attestation``), then the secret from the first server that grants it."""
    if ca_pem is None:
        if not ca_chain_path:
            raise GeodeError(f"{ENV_CA_CHAIN} is required (the CA that issued the "
                             "provisioning server's certificate)")
        try:
            with open(ca_chain_path, "rb") as f:
                ca_pem = f.read()
        except OSError as e:
            raise GeodeError(f"cannot read the CA chain: {e.strerror}",
                             where=ca_chain_path) from None
    creds = create(source or dev_attestation_source())
    return provision_with(creds, ca_pem, parse_servers(servers), timeout=timeout).secret


def secret_string(secret: bytes) -> str:
    """The secret as ``SECRET_PROVISION_SECRET_STRING`` (text, without a trailing NUL)."""
    text = secret[:-1] if secret.endswith(b"\0") else secret
    if len(text) > MAX_SECRET_STRING or b"\0" in text:
        raise GeodeError(f"the secret is not a string of at most {MAX_SECRET_STRING} bytes "
                         f"(set {ENV_SET_KEY} for binary keys)")
    try:
        return text.decode()
    except UnicodeDecodeError:
        raise GeodeError("the secret is not UTF-8 text (set "
                         f"{ENV_SET_KEY} for binary keys)") from None


def check_key(secret: bytes, name: str) -> bytes:
    if len(secret) != KEY_SIZE:
        raise GeodeError(f"{ENV_SET_KEY}={name}: the secret is {len(secret)} bytes, a key is "
                         f"{KEY_SIZE}")
    if not name or "/" in name or name.startswith("_"):
        raise GeodeError(f"{ENV_SET_KEY}={name!r}: not a writable key name")
    return secret


def apply(secret: bytes, env: Mapping[str, str] | None = None,
          keys_dir: str = "/dev/attestation/keys") -> None:
    """Inside the shield, what Gramine's constructor does with a secret: write it to
    ``keys/NAME`` when ``SECRET_PROVISION_SET_KEY=NAME``, else set
    ``SECRET_PROVISION_SECRET_STRING`` in this process's environment."""
    env = os.environ if env is None else env
    name = env.get(ENV_SET_KEY)
    if name:
        key = check_key(secret, name)
        try:
            with open(os.path.join(keys_dir, name), "wb", buffering=0) as f:
                f.write(key)
        except OSError as e:
            raise GeodeError(f"cannot set key {name}: {e.strerror}", where=keys_dir) from None
    else:
        os.environ[ENV_SECRET_STRING] = secret_string(secret)
