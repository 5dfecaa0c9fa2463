"""Helpers of the RA-TLS tests (import as ``from ratls_helpers import ...``): identities, a
throwaway CA, the provisioning server in a subprocess."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from geode.formats.sigstruct import Sigstruct
from geode.tee import EnclaveIdentity

needs_fuse = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="real FUSE mounts need root, /dev/fuse and fusermount3",
)


def make_identity(seed: int, *, debug: bool = False, isv_svn: int = 3) -> EnclaveIdentity:
    rnd = hashlib.sha256(b"ratls" + bytes([seed])).digest()
    sig = Sigstruct(modulus=rnd * 12, enclave_hash=hashlib.sha256(rnd).digest(),
                    isv_prod_id=7, isv_svn=isv_svn,
                    attribute_flags=0x04 | (2 if debug else 0), attribute_xfrm=0x03)
    return EnclaveIdentity(sig.enclave_hash, sig)


def make_ca(out: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate it issued (localhost, 127.0.0.1)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Provisioning CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = {"ca": out / "ca.crt", "cert": out / "server.crt", "key": out / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["cert"].write_bytes(cert.public_bytes(pem))
    paths["key"].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


class ProvServer:
    """``geode secret-prov serve`` in a subprocess, on a free port of 127.0.0.1."""

    def __init__(self, tmp: Path, secret: bytes, *args: str, env: dict[str, str] | None = None,
                 tls: dict[str, Path] | None = None) -> None:
        import os
        import re
        import subprocess
        import sys
        import time

        tmp.mkdir(parents=True, exist_ok=True)
        ca = tls or make_ca(tmp / "ca")
        self.ca = ca["ca"].read_bytes()
        self.ca_path = ca["ca"]
        secret_file = tmp / "secret"
        secret_file.write_bytes(secret)
        self.log = tmp / "server.log"
        bindir = str(Path(sys.executable).parent)
        full_env = dict(os.environ if env is None else env)
        full_env["PATH"] = f"{bindir}:{full_env.get('PATH', '/usr/bin:/bin')}"
        self.proc = subprocess.Popen(
            ["geode", "secret-prov", "serve", "--cert", str(ca["cert"]), "--key",
             str(ca["key"]), "--secret", str(secret_file), "--host", "127.0.0.1",
             "--port", "0", *args],
            env=full_env, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))  # noqa: SIM115
        deadline = time.monotonic() + 30
        while True:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log.read_text())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server did not start: {self.log.read_text()}")
            time.sleep(0.02)

    def lines(self) -> list[str]:
        return [ln for ln in self.log.read_text().splitlines()
                if ln.startswith("secret-prov: 127.0.0.1:")]

    def wait_lines(self, count: int, timeout: float = 20.0) -> list[str]:
        import time

        deadline = time.monotonic() + timeout
        while len(self.lines()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.lines()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
