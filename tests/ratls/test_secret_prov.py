"""``geode secret-prov serve`` over real TLS on 127.0.0.1 with Gramine's wire protocol: the
secret goes only to clients whose RA-TLS certificate and measurement pass; every attack is
refused with one logged reason while the server keeps serving the others."""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from ratls_helpers import ProvServer, make_identity

from geode.errors import GeodeError
from geode.ratls import cert as C
from geode.ratls.secret_prov import (
    REQUEST,
    RESPONSE,
    client_context,
    parse_servers,
    provision,
    provision_with,
)
from geode.tee.sim import SimBackend, authority

SECRET = bytes(range(16))
GOOD = make_identity(1)


def creds_for(seed: int = 1, *, debug: bool = False) -> C.Credentials:
    return C.create(C.backend_source(SimBackend(make_identity(seed, debug=debug))))


@pytest.fixture
def server(tmp_path: Path, collateral: Path) -> Iterator[ProvServer]:
    srv = ProvServer(tmp_path, SECRET, "--collateral", str(collateral), "--allow-simulated",
                     "--mrenclave", GOOD.measurement.hex())
    yield srv
    srv.stop()


def get(srv: ProvServer, creds: C.Credentials) -> bytes:
    return provision_with(creds, srv.ca, [("127.0.0.1", srv.port)], timeout=20).secret


def refused(srv: ProvServer, creds: C.Credentials) -> None:
    with pytest.raises(GeodeError, match="without a secret"):
        get(srv, creds)


def test_granted_to_the_right_measurement_refused_to_another(server: ProvServer) -> None:
    assert get(server, creds_for(1)) == SECRET
    refused(server, creds_for(2))
    lines = server.wait_lines(2)
    assert f"measurement={GOOD.measurement.hex()}" in lines[0] and "granted" in lines[0]
    assert "refused: policy.mr_enclave" in lines[1]
    assert SECRET.hex() not in server.log.read_text()


def test_debug_enclave_refused_unless_allowed(tmp_path: Path, server: ProvServer,
                                              collateral: Path) -> None:
    debug = make_identity(1, debug=True)
    creds = C.create(C.backend_source(SimBackend(debug)))
    refused(server, creds)
    assert "refused: policy.debug" in server.wait_lines(1)[0]
    allowing = ProvServer(tmp_path / "b", SECRET, "--collateral", str(collateral),
                          "--allow-simulated", "--allow-debug", "--mrenclave",
                          debug.measurement.hex())
    try:
        assert get(allowing, creds) == SECRET
    finally:
        allowing.stop()


def test_outdated_tcb_refused_without_the_flag(tmp_path: Path, collateral: Path) -> None:
    outdated = tmp_path / "outdated-collateral"
    shutil.copytree(collateral, outdated)
    (outdated / "tcb_info.json").write_bytes(authority().tcb_info(status="OutOfDate"))
    env_policy = {"RA_TLS_MRENCLAVE": GOOD.measurement.hex(), "RA_TLS_MRSIGNER": "any",
                  "RA_TLS_ISV_PROD_ID": "any", "RA_TLS_ISV_SVN": "any"}
    import os

    strict = ProvServer(tmp_path / "a", SECRET, "--collateral", str(outdated),
                        "--allow-simulated", env={**os.environ, **env_policy})
    lenient = ProvServer(tmp_path / "b", SECRET, "--collateral", str(outdated),
                         "--allow-simulated", env={**os.environ, **env_policy,
                                                   "RA_TLS_ALLOW_OUTDATED_TCB_INSECURE": "1"})
    try:
        refused(strict, creds_for(1))
        assert "refused: policy.tcb_status: OutOfDate is not allowed" in strict.wait_lines(1)[0]
        assert get(lenient, creds_for(1)) == SECRET
    finally:
        strict.stop()
        lenient.stop()


def test_simulated_evidence_refused_by_a_server_that_does_not_allow_it(
        tmp_path: Path, collateral: Path) -> None:
    srv = ProvServer(tmp_path, SECRET, "--collateral", str(collateral), "--mrenclave",
                     GOOD.measurement.hex())
    try:
        refused(srv, creds_for(1))
        line = srv.wait_lines(1)[0]
        assert "refused:" in line and "simulat" in line
    finally:
        srv.stop()


def _forged(creds: C.Credentials) -> tuple[C.Credentials, C.Credentials]:
    """(a certificate of another key carrying these claims and evidence,
    a fresh certificate with new claims around this evidence)."""
    ext = creds.cert.extensions.get_extension_for_oid(
        x509.ObjectIdentifier(C.OID_TAGGED_EVIDENCE))
    value = ext.value.value  # type: ignore[attr-defined]
    quote, _ = cbor2.loads(value).value
    nb, na = C.validity({})
    other = ec.generate_private_key(ec.SECP384R1())
    copied = C.build_certificate(other, C.OID_TAGGED_EVIDENCE, value, not_before=nb,
                                 not_after=na)
    thief = ec.generate_private_key(ec.SECP384R1())
    fresh = C.build_certificate(
        thief, C.OID_TAGGED_EVIDENCE,
        C.tagged_evidence(quote, C.encode_claims(C.spki_der(thief.public_key()))),
        not_before=nb, not_after=na)
    return C.Credentials(other, copied), C.Credentials(thief, fresh)


def test_forged_and_replayed_certificates_refused(server: ProvServer) -> None:
    copied, replayed = _forged(creds_for(1))
    refused(server, copied)
    refused(server, replayed)
    lines = server.wait_lines(2)
    assert "pubkey-hash claim does not match the certificate's public key" in lines[0]
    assert "report_data does not bind the claims" in lines[1]
    assert get(server, creds_for(1)) == SECRET


def test_garbage_and_disconnects_do_not_disturb_others(server: ProvServer) -> None:
    good = creds_for(1)
    results: list[bytes | str] = []

    def client() -> None:
        try:
            results.append(get(server, good))
        except GeodeError as e:
            results.append(str(e))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads[:3]:
        t.start()
    # 1. not TLS at all
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
        s.recv(100)
    # 2. connects and goes away before the handshake
    socket.create_connection(("127.0.0.1", server.port)).close()
    ctx = client_context(good, server.ca)
    # 3. TLS and attestation fine, then half a request and a disconnect
    with socket.create_connection(("127.0.0.1", server.port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        conn.sendall(REQUEST[:10])
    # 4. TLS and attestation fine, then garbage instead of the request
    with socket.create_connection(("127.0.0.1", server.port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        conn.sendall(b"X" * len(REQUEST))
        assert conn.recv(100) == b""
    # 5. TLS without any client certificate
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.load_verify_locations(cadata=server.ca.decode())
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        try:
            with bare.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                conn.sendall(REQUEST)
                conn.recv(100)
        except (ssl.SSLError, OSError):
            pass
    for t in threads[3:]:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [SECRET] * 6
    lines = server.wait_lines(11)
    refusals = [ln for ln in lines if "refused" in ln]
    assert len([ln for ln in lines if "granted" in ln]) == 6
    assert len(refusals) == 5, lines
    text = "\n".join(refusals)
    assert "TLS handshake failed" in text
    assert "disconnected before a complete request (10 of 35 bytes)" in text
    assert "not a SECRET_PROVISION_RA_TLS_REQUEST_V1 request" in text


def test_wire_protocol_bytes(server: ProvServer) -> None:
    ctx = client_context(creds_for(1), server.ca)
    with socket.create_connection(("127.0.0.1", server.port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as conn:
        conn.sendall(b"SECRET_PROVISION_RA_TLS_REQUEST_V1\0")
        data = b""
        while len(data) < 37 + 4 + 16:
            chunk = conn.recv(100)
            assert chunk
            data += chunk
    assert data[:37] == b"SECRET_PROVISION_RA_TLS_RESPONSE_V1:\0" == RESPONSE
    assert struct.unpack(">I", data[37:41]) == (16,) and data[41:] == SECRET


def test_client_api_and_servers_variable(server: ProvServer, tmp_path: Path) -> None:
    assert parse_servers(None) == [("localhost", 4433)]
    assert parse_servers("a:1,b:2; c:3 d:4") == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
    with pytest.raises(GeodeError, match="not HOST:PORT"):
        parse_servers("a:xx")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(server.ca)
    source = C.backend_source(SimBackend(GOOD))
    # the first server is down: the next one is tried
    servers = f"127.0.0.1:1;127.0.0.1:{server.port}"
    assert provision(servers=servers, ca_chain_path=str(ca), source=source) == SECRET
    with pytest.raises(GeodeError, match="SECRET_PROVISION_CA_CHAIN_PATH is required"):
        provision(servers=servers, source=source)
