"""The secret provisioning server (``geode secret-prov serve``): asyncio, mutual TLS.

Per connection, in this order, each step bounded by a timeout: TLS handshake (the server's
CA-issued certificate; the client must present a certificate, which is then checked by the
:class:`~geode.ratls.verify.RatlsVerifier`, not by a CA: see :mod:`geode.ratls.tls`), RA-TLS
verification and policy, the 35-byte request, the response with the secret. Exactly one log
line per connection says who (address), what (evidence kind and Geode measurement, when
known) and the decision (granted, or refused and why); the secret is never logged. Anything
a client does (garbage instead of TLS, a bad certificate, a wrong request, a disconnect at any
point) ends that connection only. Certificate verification runs in a worker thread, so
handshakes of other clients proceed meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path

from geode.errors import GeodeError
from geode.log import get_logger
from geode.ratls.secret_prov import REQUEST, RESPONSE
from geode.ratls.verify import RatlsOutcome, RatlsVerifier

log = get_logger("geode.secret_prov")


class _PausedStreamProtocol(asyncio.StreamReaderProtocol):
    """A stream protocol that reads nothing before TLS is set up: bytes a fast client sends
    (its ClientHello) while the handler is being scheduled would otherwise land in the plain
    stream's buffer, where ``start_tls`` never sees them, and the handshake would hang."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """The server's TLS context: its CA-issued certificate; any client certificate is
    requested and handed to the RA-TLS verifier."""
    from geode.ratls.tls import accept_any_client_certificate

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise GeodeError(f"cannot load the server certificate and key: {e}",
                         where=str(cert)) from None
    accept_any_client_certificate(ctx)
    return ctx


@dataclass
class Stats:
    granted: int = 0
    refused: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def refuse(self, stage: str) -> None:
        self.refused += 1
        self.reasons[stage] = self.reasons.get(stage, 0) + 1


class SecretProvServer:
    """Serves ``secret`` to clients whose RA-TLS certificate ``verifier`` accepts."""

    def __init__(self, secret: bytes, context: ssl.SSLContext, verifier: RatlsVerifier, *,
                 host: str = "0.0.0.0", port: int = 4433, timeout: float = 10.0,
                 workers: int = 1) -> None:
        if len(secret) > 0x7FFFFFFF:
            raise GeodeError("the secret is larger than 2 GiB")
        self.secret = secret
        self.context = context
        self.verifier = verifier
        self.host = host
        self.port = port
        self.timeout = timeout
        self.stats = Stats()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "ratls-verify")
        self._server: asyncio.Server | None = None

    async def start(self) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _PausedStreamProtocol(asyncio.StreamReader(limit=1 << 16), self._handle),
            self.host, self.port, backlog=1024)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        return self._server

    async def serve_forever(self) -> None:
        server = self._server or await self.start()
        async with server:
            await server.serve_forever()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- one connection ----------------------------------------------------------------------

    def _refuse(self, who: str, what: str, stage: str, reason: str) -> None:
        self.stats.refuse(stage)
        log.warning("%s %s: refused: %s", who, what, reason)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        who = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        what = "(no certificate)"
        try:
            try:
                await asyncio.wait_for(writer.start_tls(self.context), self.timeout)
            except (ssl.SSLError, OSError, EOFError, asyncio.IncompleteReadError) as e:
                self._refuse(who, what, "tls", f"TLS handshake failed: "
                             f"{getattr(e, 'reason', None) or e!r}")
                return
            except TimeoutError:
                self._refuse(who, what, "tls", "TLS handshake timed out")
                return
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            loop = asyncio.get_running_loop()
            outcome: RatlsOutcome = await loop.run_in_executor(
                self._pool, self.verifier.verify_der, der)
            what = _describe(outcome)
            if not outcome.ok:
                self._refuse(who, what, "attestation", outcome.reason)
                return
            try:
                request = await asyncio.wait_for(reader.readexactly(len(REQUEST)),
                                                 self.timeout)
            except asyncio.IncompleteReadError as e:
                self._refuse(who, what, "protocol", "disconnected before a complete request "
                             f"({len(e.partial)} of {len(REQUEST)} bytes)")
                return
            except TimeoutError:
                self._refuse(who, what, "protocol", "no request within the timeout")
                return
            if request != REQUEST:
                self._refuse(who, what, "protocol", "not a SECRET_PROVISION_RA_TLS_REQUEST_V1 "
                             "request")
                return
            writer.write(RESPONSE + struct.pack(">I", len(self.secret)) + self.secret)
            try:
                await asyncio.wait_for(writer.drain(), self.timeout)
            except (OSError, TimeoutError) as e:
                self._refuse(who, what, "protocol", f"disconnected while the secret was sent "
                             f"({e.__class__.__name__})")
                return
            self.stats.granted += 1
            extra = f" ({'; '.join(outcome.warnings)})" if outcome.warnings else ""
            log.info("%s %s: granted: %s, %d-byte secret sent%s", who, what,
                        outcome.reason, len(self.secret), extra)
        except (ConnectionError, ssl.SSLError, OSError) as e:
            self._refuse(who, what, "connection", f"connection error: {e}")
        except Exception as e:  # noqa: BLE001 - one client must never stop the server
            self._refuse(who, what, "internal", f"internal error: {e.__class__.__name__}: {e}")
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


def _describe(outcome: RatlsOutcome) -> str:
    parts = [outcome.kind or "?"]
    if outcome.measurement:
        parts.append(f"measurement={outcome.measurement}")
    signer = outcome.field("mr_signer")
    if outcome.kind == "sgx" and signer:
        parts.append(f"mrsigner={str(signer)[:16]}...")
    return " ".join(parts)
