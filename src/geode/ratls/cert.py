"""RA-TLS certificate creation, in Gramine's format (``ra_tls_create_key_and_crt_der``).

A fresh ECDSA P-384 key; a self-signed certificate, subject and issuer
``CN=RATLS,O=GramineDevelopers,C=US``, serial 1, signed with ECDSA-SHA256, valid from
``RA_TLS_CERT_TIMESTAMP_NOT_BEFORE`` to ``RA_TLS_CERT_TIMESTAMP_NOT_AFTER`` (``YYYYMMDDhhmmss``,
UTC; defaults 20010101000000 and 20301231235959), with one non-critical extension:

* **TCG DICE tagged evidence** (OID 2.23.133.5.4.9, the default): CBOR tag 60000 over
  ``[bstr evidence, bstr claims]``; ``claims`` is the CBOR map
  ``{"pubkey-hash": bstr(CBOR [1, SHA-256(DER SubjectPublicKeyInfo)])}`` (plus ``"nonce"``
  when given) and the evidence binds ``SHA-256(claims) || 0^32`` as its user report data.
  Geode adds ``"geode-evidence-certs"`` (PEM) when the evidence came with certificates
  (SEV-SNP: VCEK/VLEK, ASK, ARK), so a verifier needs no KDS access; Gramine's verifier
  ignores unknown claims.
* **legacy** (OID 1.2.840.113741.1337.6, on request): the raw evidence, binding
  ``SHA-256(DER SubjectPublicKeyInfo) || 0^32``.

The evidence comes from an :data:`EvidenceSource`: a function from the 64 bytes of user
report data to the evidence. Inside the shield that is :func:`dev_attestation_source` (write
``/dev/attestation/user_report_data``, read ``/dev/attestation/quote``, as Gramine's library
does); in the supervisor or a host-side test it is :func:`backend_source` over a
:class:`geode.tee.TeeBackend`. On ``tdx``/``snp`` the backend binds the user report data
through the construction of docs/attestation.md (``geode.tee.tsm.report_data``); verifiers
recompute it (:mod:`geode.ratls.verify`).

Only the standard library, ``cryptography`` (>= 38) and ``cbor2`` are imported, so this
module also runs inside the shield with Debian's python3.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from geode.errors import GeodeError

if TYPE_CHECKING:
    from geode.tee import TeeBackend

#: TCG DICE "tagged evidence" extension (Gramine v1.8+)
OID_TAGGED_EVIDENCE = "2.23.133.5.4.9"
#: Gramine's legacy extension: the raw quote
OID_LEGACY_QUOTE = "1.2.840.113741.1337.6"
#: CBOR tag of the tagged-evidence value
CBOR_TAG_EVIDENCE = 60000
#: IANA COSE hash algorithm ids used in the pubkey-hash claim
HASH_ALGS: Mapping[int, str] = {1: "sha256", 7: "sha384", 8: "sha512"}
CLAIM_PUBKEY_HASH = "pubkey-hash"
CLAIM_NONCE = "nonce"
CLAIM_CERTS = "geode-evidence-certs"

NOT_BEFORE_ENV = "RA_TLS_CERT_TIMESTAMP_NOT_BEFORE"
NOT_AFTER_ENV = "RA_TLS_CERT_TIMESTAMP_NOT_AFTER"
DEFAULT_NOT_BEFORE = "20010101000000"
DEFAULT_NOT_AFTER = "20301231235959"

SUBJECT = x509.Name([
    x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GramineDevelopers"),
    x509.NameAttribute(NameOID.COMMON_NAME, "RATLS"),
])

#: 64 bytes of user report data -> evidence, or (evidence, PEM certificates that came with it)
EvidenceSource = Callable[[bytes], "bytes | tuple[bytes, bytes]"]


def parse_timestamp(text: str, name: str) -> datetime:
    """``YYYYMMDDhhmmss`` (UTC), as mbedTLS takes validity times."""
    try:
        if len(text) != 14 or not text.isdigit():
            raise ValueError
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        raise GeodeError(f"{name}={text!r}: expected YYYYMMDDhhmmss") from None


def validity(env: Mapping[str, str] | None = None) -> tuple[datetime, datetime]:
    """The validity window from ``RA_TLS_CERT_TIMESTAMP_NOT_BEFORE/_NOT_AFTER``."""
    env = os.environ if env is None else env
    nb = parse_timestamp(env.get(NOT_BEFORE_ENV) or DEFAULT_NOT_BEFORE, NOT_BEFORE_ENV)
    na = parse_timestamp(env.get(NOT_AFTER_ENV) or DEFAULT_NOT_AFTER, NOT_AFTER_ENV)
    if na <= nb:
        raise GeodeError(f"{NOT_AFTER_ENV} is not after {NOT_BEFORE_ENV}")
    return nb, na


def spki_der(key: ec.EllipticCurvePublicKey | Any) -> bytes:
    """DER SubjectPublicKeyInfo of a public key."""
    der: bytes = key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def encode_claims(pubkey_spki: bytes, *, nonce: bytes | None = None,
                  certs: bytes = b"") -> bytes:
    """The CBOR claims map binding ``pubkey_spki`` (SHA-256, alg id 1)."""
    claims: dict[str, bytes] = {
        CLAIM_PUBKEY_HASH: cbor2.dumps([1, hashlib.sha256(pubkey_spki).digest()])}
    if nonce is not None:
        claims[CLAIM_NONCE] = bytes(nonce)
    if certs:
        claims[CLAIM_CERTS] = bytes(certs)
    return bytes(cbor2.dumps(claims))


def report_data_for(blob: bytes) -> bytes:
    """``SHA-256(blob) || 0^32``: the 64 bytes of user report data that bind ``blob``."""
    return hashlib.sha256(blob).digest() + bytes(32)


def _split(result: bytes | tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    if isinstance(result, tuple):
        return bytes(result[0]), bytes(result[1])
    return bytes(result), b""


# --- evidence sources ----------------------------------------------------------------------------

def dev_attestation_source(root: str | os.PathLike[str] = "/dev/attestation") -> EvidenceSource:
    """Evidence through Gramine's pseudo-files (inside the shield)."""
    base = Path(root)

    def source(user_report_data: bytes) -> tuple[bytes, bytes]:
        try:
            with open(base / "user_report_data", "wb", buffering=0) as f:
                f.write(user_report_data)
            with open(base / "quote", "rb", buffering=0) as f:
                quote = f.read()
        except OSError as e:
            raise GeodeError(f"cannot get evidence: {e.strerror}", where=str(base)) from None
        certs = b""
        with contextlib.suppress(OSError):
            certs = (base / "certs").read_bytes()
        if not quote:
            raise GeodeError("empty evidence", where=str(base / "quote"))
        return quote, certs

    return source


def backend_source(backend: TeeBackend) -> EvidenceSource:
    """Evidence straight from a TEE backend (the supervisor; host-side tests)."""

    def source(user_report_data: bytes) -> tuple[bytes, bytes]:
        evidence = backend.evidence(user_report_data)
        return evidence.quote, evidence.certs

    return source


# --- certificates --------------------------------------------------------------------------------

@dataclass
class Credentials:
    """An RA-TLS key and certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_der(self) -> bytes:
        """The private key as DER (SEC1 ``EC PRIVATE KEY``, as mbedtls_pk_write_key_der)."""
        return self.key.private_bytes(serialization.Encoding.DER,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption())

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption())

    def write(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], *,
              pem: bool = False) -> None:
        """Write the certificate and key (key mode 0600), DER or PEM."""
        for path, data, mode in ((cert_path, self.cert_pem() if pem else self.cert_der(), 0o644),
                                 (key_path, self.key_pem() if pem else self.key_der(), 0o600)):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except OSError as e:
                raise GeodeError(f"cannot write: {e.strerror}", where=str(path)) from None


def build_certificate(key: ec.EllipticCurvePrivateKey, oid: str, value: bytes, *,
                      not_before: datetime, not_after: datetime,
                      public_key: ec.EllipticCurvePublicKey | None = None) -> x509.Certificate:
    """A certificate of Gramine's RA-TLS shape carrying ``value`` under ``oid``, signed by
    ``key`` (``public_key`` other than the signer's is for attack tests only)."""
    return (x509.CertificateBuilder()
            .subject_name(SUBJECT)
            .issuer_name(SUBJECT)
            .public_key(public_key or key.public_key())
            .serial_number(1)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value),
                           critical=False)
            .sign(key, hashes.SHA256()))


def tagged_evidence(evidence: bytes, claims: bytes) -> bytes:
    """The value of the 2.23.133.5.4.9 extension."""
    return bytes(cbor2.dumps(cbor2.CBORTag(CBOR_TAG_EVIDENCE, [evidence, claims])))


def create(source: EvidenceSource, *, legacy: bool = False, nonce: bytes | None = None,
           not_before: datetime | None = None, not_after: datetime | None = None,
           key: ec.EllipticCurvePrivateKey | None = None,
           env: Mapping[str, str] | None = None) -> Credentials:
    """A fresh RA-TLS key and certificate whose evidence comes from ``source``.

    The validity window defaults to the ``RA_TLS_CERT_TIMESTAMP_*`` variables of ``env``
    (default: the process environment)."""
    if not_before is None or not_after is None:
        nb, na = validity(env)
        not_before = not_before or nb
        not_after = not_after or na
    key = key or ec.generate_private_key(ec.SECP384R1())
    spki = spki_der(key.public_key())
    if legacy:
        quote, _ = _split(source(report_data_for(spki)))
        value, oid = quote, OID_LEGACY_QUOTE
    else:
        # SEV-SNP evidence comes with certificates that the claims should carry, but the
        # claims are hashed into the evidence: a first quote fetches them, a second binds
        # claims that include them.
        claims = encode_claims(spki, nonce=nonce)
        quote, certs = _split(source(report_data_for(claims)))
        if certs:
            claims = encode_claims(spki, nonce=nonce, certs=certs)
            quote, again = _split(source(report_data_for(claims)))
            if again != certs:
                raise GeodeError("the evidence's certificates changed between two quotes")
        value, oid = tagged_evidence(quote, claims), OID_TAGGED_EVIDENCE
    cert = build_certificate(key, oid, value, not_before=not_before, not_after=not_after)
    return Credentials(key, cert)
