"""The ``sim`` TEE: a software stand-in for hardware, for development and CI.

It exercises the same code paths as hardware backends but protects nothing beyond the ``none``
backend: its secrets live on the host, readable by root. Everything it produces is labelled
as simulated, and default verifiers reject it.

Platform secret: 32 random bytes in ``<pkglibdir>/sim/platform-secret`` (mode 0600), created
on first use. It plays the role of the CPU's fused key.

Sealing keys (``/dev/attestation/keys/_sgx_mrenclave`` and ``_sgx_mrsigner``), modelled on
EGETKEY's key policies::

    key = HMAC-SHA256(platform_secret,
                      "geode-sim-seal/1" || 0x00 || policy || 0x00 || identity (32 B)
                      || u16_le(isv_prod_id) || u16_le(isv_svn))[:16]

where ``policy`` is ``mrenclave`` (identity = the measurement) or ``mrsigner`` (identity =
MRSIGNER, so every enclave of the same signer, product and SVN gets the same key).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from pathlib import Path

from geode.errors import GeodeError
from geode.tee import SEAL_KEY_NAMES, EnclaveIdentity, TeeBackend

SEAL_DOMAIN = b"geode-sim-seal/1\0"


def platform_secret_path() -> Path:
    from geode.manifest.runtimedir import pkglibdir

    return pkglibdir() / "sim" / "platform-secret"


def platform_secret() -> bytes:
    """The installation's simulated platform secret, created atomically on first use."""
    path = platform_secret_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(32))
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a secret another process just created
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        data = path.read_bytes()
    except OSError as e:
        raise GeodeError(f"cannot read the sim platform secret: {e.strerror}",
                         where=str(path)) from None
    if len(data) != 32:
        raise GeodeError("sim platform secret is not 32 bytes", where=str(path))
    return data


class SimBackend(TeeBackend):
    name = "sim"
    attestation_type = "dcap"

    def __init__(self, identity: EnclaveIdentity) -> None:
        super().__init__(identity)
        if identity.sigstruct is None:
            raise GeodeError("the sim TEE needs a signed manifest (APP.manifest.sgx and "
                             "APP.sig from gramine-sgx-sign): its identity comes from the "
                             "SIGSTRUCT")
        self._secret = platform_secret()

    def seal_key(self, name: str) -> bytes:
        if name not in SEAL_KEY_NAMES:
            raise GeodeError(f"unknown sealing key {name!r}")
        ident = self.identity
        policy, value = (
            (b"mrenclave", ident.measurement) if name == "_sgx_mrenclave"
            else (b"mrsigner", ident.mrsigner)
        )
        msg = (SEAL_DOMAIN + policy + b"\0" + value
               + struct.pack("<HH", ident.isv_prod_id, ident.isv_svn))
        return hmac.new(self._secret, msg, hashlib.sha256).digest()[:16]
