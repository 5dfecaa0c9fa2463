"""``ssl`` plumbing for RA-TLS: in-memory credentials, and servers that take self-signed client
certificates so that the RA-TLS verifier (not a CA) decides.

Python's ``ssl`` verifies a requested client certificate against the context's CA store and
aborts the handshake when it does not chain, and it offers no verification callback. An RA-TLS
client certificate is self-signed by design (its trust comes from the evidence inside it), so
:func:`accept_any_client_certificate` installs OpenSSL's verify callback on the context with
``ctypes`` (``SSL_CTX_set_verify`` from the very libssl that ``_ssl`` is linked against,
``SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT``, a callback that accepts): the handshake
still proves that the client holds the certificate's private key (CertificateVerify), and the
server must verify the certificate itself before trusting the connection
(:class:`geode.ratls.verify.RatlsVerifier`). Gramine's mbedTLS server does the same with its
verify callback. Setting ``verify_mode`` on the context afterwards removes the callback.

Clients connecting to an RA-TLS *server* need no hook: ``verify_mode = CERT_NONE`` still
delivers the server's certificate (``getpeercert(binary_form=True)``) for the verifier.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import ssl
import sys
import tempfile

from geode.errors import GeodeError

_SSL_VERIFY_PEER = 0x01
_SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02
_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept_all(preverify_ok: int, store_ctx: int | None) -> int:
    return 1


_accept = _VERIFY_CB(_accept_all)  # module-level: must outlive every context using it


def _libssl() -> ctypes.CDLL:
    import _ssl

    lib = ctypes.CDLL(_ssl.__file__)  # symbols resolve through its libssl dependency
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CB]
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    return lib


def _ssl_ctx_pointer(context: ssl.SSLContext) -> int:
    """The ``SSL_CTX *`` of a context: the first field after the object header."""
    header = sys.getsizeof(object())  # PyObject_HEAD (16 bytes on 64-bit release builds)
    value = ctypes.c_void_p.from_address(id(context) + header).value
    if not value:
        raise GeodeError("cannot reach the OpenSSL context of an ssl.SSLContext")
    return value


def accept_any_client_certificate(context: ssl.SSLContext) -> None:
    """Require a client certificate but let the application verify it (see the module doc)."""
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        lib = _libssl()
        ptr = _ssl_ctx_pointer(context)
        want = _SSL_VERIFY_PEER | _SSL_VERIFY_FAIL_IF_NO_PEER_CERT
        # sanity: the pointer really is this context's SSL_CTX (CERT_REQUIRED = both bits)
        if lib.SSL_CTX_get_verify_mode(ptr) != want:
            raise GeodeError("unexpected ssl.SSLContext layout: cannot install the RA-TLS "
                             "client certificate callback")
        lib.SSL_CTX_set_verify(ptr, want, _accept)
    except (OSError, AttributeError) as e:
        raise GeodeError(f"cannot install the RA-TLS client certificate callback: {e}") from None


def load_credentials(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """``load_cert_chain`` from memory: through a memfd (no file on disk), else a 0600
    temporary file removed at once."""
    data = cert_pem + b"\n" + key_pem
    try:
        fd = os.memfd_create("ratls-credentials", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        try:
            os.write(fd, data)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
            return
        except (OSError, ssl.SSLError):
            pass  # no /proc: fall back to a file
        finally:
            os.close(fd)
    handle, path = tempfile.mkstemp(prefix="ratls-", suffix=".pem")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        context.load_cert_chain(path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def ratls_server_client_context() -> ssl.SSLContext:
    """A client context for connecting to an RA-TLS *server*: no CA check (the certificate
    is self-signed), so the caller must verify ``getpeercert(binary_form=True)`` with
    :class:`geode.ratls.verify.RatlsVerifier` before sending anything that matters."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx

